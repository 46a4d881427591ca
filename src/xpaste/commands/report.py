"""`xpaste report INPUTS... --out DIR`: the HTML report of pools, pipeline runs and augmented datasets."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xpaste.commands.app import app, example
from xpaste.errors import XPasteError

KINDS = ("pool", "run", "augmented")


def detect_input(path: Path) -> str:
    """'pool', 'run' or 'augmented' from the files a folder holds; XPasteError naming it otherwise."""
    if not path.exists():
        raise XPasteError("no such file or folder", path)
    if not path.is_dir():
        raise XPasteError("report inputs are folders (a pool, a pipeline run or an augmented dataset)", path,
                          "pass a dataset json with --dataset")
    if (path / "pool.json").is_file():
        return "pool"
    from xpaste.pipeline.rundir import RunDir

    if RunDir(path).decisions_file.is_file():
        return "run"
    if (path / "annotations.json").is_file() and (path / "images").is_dir():
        return "augmented"
    raise XPasteError("not a pool (pool.json), pipeline run (build_pool/decisions.parquet) or augmented "
                      "dataset (annotations.json + images/)", path)


@app.command("report", epilog=example(
    "xpaste report runs/offline/pool runs/offline/augmented --run runs/offline --dataset train.json --out report/"))
def report_command(
    inputs: List[Path] = typer.Argument(..., metavar="INPUTS...",
                                        help="Pool folders, pipeline run folders or augmented dataset folders "
                                             "(one of each kind; each is recognised by its files)."),
    out: Path = typer.Option(..., "--out", help="Folder for index.html and its assets/."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="Target COCO/LVIS json for category coverage."),
    run: Optional[Path] = typer.Option(None, "--run", help="Pipeline run folder (rejected candidates, win rates)."),
    max_per_category: int = typer.Option(24, "--max-per-category", min=1, help="Thumbnails per category."),
    max_categories: int = typer.Option(60, "--max-categories", min=1, help="Categories in contact sheets."),
    gallery: int = typer.Option(24, "--gallery", min=0, help="Augmented images in the gallery."),
) -> None:
    """One HTML page: contact sheets, histograms, segmenter win rates, coverage and a gallery."""
    from xpaste.report.html import write_report

    found: dict[str, Path] = {}
    if run is not None and detect_input(run) != "run":
        raise XPasteError("--run needs a pipeline run folder (with build_pool/decisions.parquet)", run)
    for path in list(inputs) + ([run] if run is not None else []):
        kind = detect_input(path)
        if kind in found and found[kind].resolve() != path.resolve():
            raise XPasteError(f"two {kind} folders given ({found[kind]} and {path})", path,
                              "the report shows one of each kind")
        found[kind] = path
    if dataset is not None and not dataset.is_file():
        raise XPasteError("no such dataset file", dataset)
    from xpaste.io import refuse_overlap

    refuse_overlap(out, {**{f"the {kind} folder": path for kind, path in found.items()},
                         "the dataset json (--dataset)": dataset}, writes=("index.html", "assets"))
    page = write_report(out, pool=found.get("pool"), run=found.get("run"), augmented=found.get("augmented"),
                        dataset=dataset, max_per_category=max_per_category, max_categories=max_categories,
                        gallery=gallery)
    typer.echo(str(page))

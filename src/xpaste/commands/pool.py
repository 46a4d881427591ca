"""`xpaste pool import-coco | import-xpaste | info`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import pool_app


def _print_report(report, out: Path) -> None:
    typer.echo(f"{out}: {report.summary()}")
    for what, why in report.skipped[:20]:
        typer.echo(f"  skipped {what}: {why}")
    if len(report.skipped) > 20:
        typer.echo(f"  ... and {len(report.skipped) - 20} more skipped")


@pool_app.command("import-coco")
def import_coco_cmd(
    dataset: Path = typer.Argument(..., help="COCO/LVIS annotation json"),
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    out: Path = typer.Option(..., "--out", help="pool folder to create"),
    min_area: int = typer.Option(1024, "--min-area", help="skip instances with fewer mask pixels (default 32x32)"),
    append: bool = typer.Option(False, "--append", help="add to an existing pool"),
) -> None:
    """Cut every non-crowd annotated instance out of a dataset into a pool (the 'real instances' source)."""
    from xpaste.pool.importers import import_coco

    _print_report(import_coco(dataset, images, out, min_area=min_area, append=append), out)


@pool_app.command("import-xpaste")
def import_xpaste_cmd(
    pool_json: Path = typer.Argument(..., help="official X-Paste pool json {category index: [paths]}"),
    out: Path = typer.Option(..., "--out", help="pool folder to create"),
    root: Optional[Path] = typer.Option(None, "--root", help="folder the paths live under (default: the json's)"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="COCO/LVIS json giving category names"),
    id_offset: int = typer.Option(1, "--id-offset", help="category id = json key + this"),
    append: bool = typer.Option(False, "--append", help="add to an existing pool"),
) -> None:
    """Import an official X-Paste instance pool."""
    from xpaste.pool.importers import import_xpaste

    report = import_xpaste(pool_json, out, root=root, dataset_path=dataset, id_offset=id_offset, append=append)
    _print_report(report, out)


@pool_app.command("info")
def info_cmd(pool: Path = typer.Argument(..., help="pool folder")) -> None:
    """Per-category instance counts and CLIP score summaries."""
    from xpaste.pool.importers import pool_summary
    from xpaste.pool.store import InstancePool

    p = InstancePool.open(pool)
    rows = pool_summary(p)
    width = max([len(r["name"]) for r in rows] + [8])
    typer.echo(f"{'id':>6}  {'category':<{width}}  {'count':>7}  {'clip mean':>9}  {'min':>6}  {'max':>6}  sources")
    for r in rows:
        clip = (f"{r['clip_mean']:9.2f}  {r['clip_min']:6.2f}  {r['clip_max']:6.2f}" if "clip_mean" in r
                else f"{'-':>9}  {'-':>6}  {'-':>6}")
        typer.echo(f"{r['id']:>6}  {r['name']:<{width}}  {r['instances']:>7}  {clip}  {r['sources']}")
    typer.echo(f"{len(p)} instances in {len(p.counts())} of {len(p.categories)} categories")

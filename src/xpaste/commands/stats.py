"""`xpaste stats`: the per-category table of a COCO / LVIS dataset (frequency group, counts, scale prior)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app, example

NAME_COLUMNS = 32  # names are truncated to this many terminal columns so the table stays aligned


def _char_width(ch: str) -> int:
    import unicodedata

    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _fit(text: str, columns: int) -> str:
    """`text` padded or truncated to exactly `columns` terminal columns (wide CJK characters count 2)."""
    # Control characters (a newline in a category name) would break the table: show them as '?'.
    text = "".join("?" if (ord(c) < 32 or 0x7F <= ord(c) < 0xA0) else c for c in str(text))
    out, used = [], 0
    total = sum(_char_width(c) for c in text)
    limit = columns if total <= columns else columns - 1  # leave room for the ellipsis
    for c in text:
        w = _char_width(c)
        if used + w > limit:
            break
        out.append(c)
        used += w
    if total > columns:
        out.append("…")
        used += 1
    return "".join(out) + " " * (columns - used)


def _scale(row: dict) -> str:
    if row["scale_mean"] is None:
        return "-"
    return f"{row['scale_mean']:.3f}±{row['scale_std']:.3f}"


def format_table(rows: list[dict]) -> str:
    id_w = max([len("id")] + [len(str(r["id"])) for r in rows])
    inst_w = max([len("instances")] + [len(str(r["instances"])) for r in rows])
    img_w = max([len("images")] + [len(str(r["images"])) for r in rows])
    name_w = min(NAME_COLUMNS, max([4] + [sum(_char_width(c) for c in str(r["name"])) for r in rows]))
    lines = [f"{'id':>{id_w}}  {_fit('name', name_w)}  freq  {'instances':>{inst_w}}  {'images':>{img_w}}  "
             f"scale (mean±std)"]
    for r in rows:
        lines.append(f"{r['id']:>{id_w}}  {_fit(r['name'], name_w)}  {str(r['frequency']):<4}  "
                     f"{r['instances']:>{inst_w}}  {r['images']:>{img_w}}  {_scale(r)}")
    return "\n".join(lines)


def summary_line(rows: list[dict], n_images: int, n_annotations: int) -> str:
    groups = {g: sum(1 for r in rows if r["frequency"] == g) for g in ("r", "c", "f")}
    other = len(rows) - sum(groups.values())
    text = (f"{len(rows)} categories (r={groups['r']}, c={groups['c']}, f={groups['f']}"
            + (f", other={other}" if other else "") + f"), {n_images} images, {n_annotations} annotations")
    return text


def dataset_option(dataset: Optional[Path], old_positional: Optional[Path]) -> Path:
    """The dataset json of `stats` and `pool import-coco`: `--dataset` (as augment and export-yolo take it), or
    the positional DATASET of earlier releases (hidden, kept for one release)."""
    if dataset is not None and old_positional is not None and dataset != old_positional:
        raise typer.BadParameter(f"given twice ({old_positional} and {dataset})", param_hint="--dataset")
    if dataset is None and old_positional is None:
        raise typer.BadParameter("missing (the COCO/LVIS annotation json)", param_hint="--dataset")
    return dataset if dataset is not None else old_positional  # type: ignore[return-value]


DATASET_OPTION = typer.Option(None, "--dataset", help="COCO/LVIS annotation json \\[required]")
#: the positional spelling of earlier releases, hidden (one release)
OLD_DATASET_ARGUMENT = typer.Argument(None, hidden=True, metavar="DATASET")


@app.command("stats", epilog=example("xpaste stats --dataset train.json --out stats.json"))
def stats_command(
    dataset: Optional[Path] = DATASET_OPTION,
    old_dataset: Optional[Path] = OLD_DATASET_ARGUMENT,
    out: Optional[Path] = typer.Option(None, "--out", help="write the table as json (xpaste-stats format), e.g. "
                                       "for augment --scale-prior"),
) -> None:
    """Per-category counts, LVIS frequency group (r/c/f) and scale prior of a dataset."""
    dataset = dataset_option(dataset, old_dataset)
    from xpaste.data.coco import load_coco
    from xpaste.data.stats import category_stats, write_stats
    from xpaste.io import check_output, refuse_overlap

    if out is not None:
        refuse_overlap(out, {"the dataset json (--dataset)": dataset}, out_is_file=True)
        check_output(out, "file")
    ds = load_coco(dataset)
    rows = category_stats(ds)
    typer.echo(format_table(rows))
    typer.echo(summary_line(rows, len(ds.images), len(ds.annotations)))
    if out is not None:
        write_stats(rows, out)
        typer.echo(f"wrote {out}")

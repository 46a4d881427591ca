"""`xpaste pool import-coco | import-xpaste | info | repair | migrate | export-png`.

Every writing command refuses an output that overlaps one of its inputs (`xpaste.io.refuse_overlap`) before
anything is written, and says which command line to run when the output already holds a pool.
"""
from __future__ import annotations

import os
import shlex
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from xpaste.commands.app import example, pool_app
from xpaste.commands.stats import DATASET_OPTION, OLD_DATASET_ARGUMENT, dataset_option

EXISTING_POOL = "a pool already exists here"  # xpaste.pool.writer's message for a pool folder already in use


@contextmanager
def _existing_pool_hint(hint: str) -> Iterator[None]:
    """Replace the writer's generic hint for an existing pool with what to run for this command."""
    from xpaste.errors import XPasteError

    try:
        yield
    except XPasteError as e:
        if e.message != EXISTING_POOL:
            raise
        raise XPasteError(e.message, e.path, hint) from None


def _new_folder_or_pool(path: Path) -> bool:
    """True when `path` does not exist yet, is an empty folder or holds a pool (pool.json): writing a pool there
    replaces no file the user made."""
    if not path.exists():
        return True
    return path.is_dir() and ((path / "pool.json").is_file() or not any(path.iterdir()))


def _command(*words: object) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _print_report(report, out: Path) -> None:
    typer.echo(f"{out}: {report.summary()}")
    for what, why in report.skipped[:20]:
        typer.echo(f"  skipped {what}: {why}")
    if len(report.skipped) > 20:
        typer.echo(f"  ... and {len(report.skipped) - 20} more skipped")


@pool_app.command("import-coco", epilog=example(
    "xpaste pool import-coco --dataset train.json --images train_images/ --out pool/"))
def import_coco_cmd(
    dataset: Optional[Path] = DATASET_OPTION,
    old_dataset: Optional[Path] = OLD_DATASET_ARGUMENT,
    images: Path = typer.Option(..., "--images", help="folder the json's file_name entries are relative to"),
    out: Path = typer.Option(..., "--out", help="pool folder to create"),
    min_area: int = typer.Option(1024, "--min-area", help="skip instances with fewer mask pixels (32 x 32)"),
    append: bool = typer.Option(False, "--append", help="add to an existing pool"),
) -> None:
    """Cut every non-crowd annotated instance out of a dataset into a pool (the 'real instances' source)."""
    from xpaste.io import refuse_overlap
    from xpaste.pool.importers import import_coco

    dataset = dataset_option(dataset, old_dataset)
    refuse_overlap(out, {"the dataset json (--dataset)": dataset, "the images folder (--images)": images})
    again = _command("xpaste", "pool", "import-coco", "--dataset", dataset, "--images", images, "--out", out,
                     "--min-area", min_area, "--append")
    with _existing_pool_hint(f"to add these instances to it run: {again}; or pick a new --out"):
        report = import_coco(dataset, images, out, min_area=min_area, append=append)
    _print_report(report, out)


@pool_app.command("import-xpaste", epilog=example(
    "xpaste pool import-xpaste LVIS_instance_pools.json --root xpaste_pool/ --dataset lvis_v1_train.json --out pool/"))
def import_xpaste_cmd(
    pool_json: Path = typer.Argument(..., help="official X-Paste pool json {category index: \\[paths]}"),
    out: Path = typer.Option(..., "--out", help="pool folder to create"),
    root: Optional[Path] = typer.Option(None, "--root", help="folder the paths live under (default: the json's)"),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="COCO/LVIS json giving category names"),
    id_offset: int = typer.Option(1, "--id-offset", help="category id = json key + this"),
    append: bool = typer.Option(False, "--append", help="add to an existing pool"),
) -> None:
    """Import an official X-Paste instance pool."""
    from xpaste.io import refuse_overlap
    from xpaste.pool.importers import import_xpaste

    refuse_overlap(out, {"the X-Paste pool json (POOL_JSON)": pool_json, "the dataset json (--dataset)": dataset})
    cutouts = root if root is not None else pool_json.parent
    o, r = (Path(os.path.realpath(p)) for p in (out, cutouts))
    # A new pool folder among the cut-outs (e.g. beside the json) writes no input; anything else overlapping is
    # refused: --out the cut-out folder itself, a folder holding it, or an existing non-pool folder inside it.
    if o == r or o in r.parents or not _new_folder_or_pool(out):
        refuse_overlap(out, {"the folder its paths live under (--root)": cutouts})
    again = _command("xpaste", "pool", "import-xpaste", pool_json, "--out", out,
                     *(("--root", root) if root is not None else ()), *(("--dataset", dataset) if dataset else ()),
                     "--id-offset", id_offset, "--append")
    with _existing_pool_hint(f"to add these instances to it run: {again}; or pick a new --out"):
        report = import_xpaste(pool_json, out, root=root, dataset_path=dataset, id_offset=id_offset, append=append)
    _print_report(report, out)


@pool_app.command("info", epilog=example("xpaste pool info pool/"))
def info_cmd(pool: Path = typer.Argument(..., help="pool folder")) -> None:
    """Per-category instance counts and CLIP score summaries."""
    from xpaste.pool.importers import pool_summary
    from xpaste.pool.store import InstancePool

    p = InstancePool.open(pool)
    if p.incomplete:
        typer.echo(f"WARNING: this pool is incomplete: a write started {p.incomplete.get('since', '?')} did not finish "
                   "(interrupted, or still running); rerun the same command to complete it")
    rows = pool_summary(p)
    width = max([len(r["name"]) for r in rows] + [8])
    typer.echo(f"{'id':>6}  {'category':<{width}}  {'count':>7}  {'clip mean':>9}  {'min':>6}  {'max':>6}  sources")
    for r in rows:
        clip = (f"{r['clip_mean']:9.2f}  {r['clip_min']:6.2f}  {r['clip_max']:6.2f}" if "clip_mean" in r
                else f"{'-':>9}  {'-':>6}  {'-':>6}")
        typer.echo(f"{r['id']:>6}  {r['name']:<{width}}  {r['instances']:>7}  {clip}  {r['sources']}")
    if not len(p):
        typer.echo("WARNING: this pool is empty: augment refuses it; fill it with `xpaste pool import-coco` or "
                   "`xpaste build-pool`", err=True)
    typer.echo(f"{len(p)} instances in {len(p.counts())} of {len(p.categories)} categories "
               f"(format version {p.version}{', codec ' + p.header['codec'] if p.version >= 2 else ''})"
               + ("; INCOMPLETE" if p.incomplete else ""))


@pool_app.command("repair", epilog=example("xpaste pool repair pool/ --drop-damaged"))
def repair_cmd(
    pool: Path = typer.Argument(..., help="pool folder (format version 2)"),
    drop_damaged: bool = typer.Option(False, "--drop-damaged",
                                      help="keep the intact rows when some rows, parts or shards are damaged"),
) -> None:
    """Rebuild a pool's index manifest from its intact index parts (after a lost manifest, part or shard).

    Every row's pixels are checked against its data shard; repeated rows (crash leftovers) are dropped.

    Damaged rows are refused unless --drop-damaged is given. A pool that opens as it is is left unchanged.
    """
    from xpaste.pool.repair import repair_pool

    report = repair_pool(pool, drop_damaged=drop_damaged)
    typer.echo(f"{pool}: {report.summary()}")


@pool_app.command("migrate", epilog=example("xpaste pool migrate old_pool/ new_pool/ --codec zstd"))
def migrate_cmd(
    old: Path = typer.Argument(..., help="existing pool folder (format version 1 or 2)"),
    new: Path = typer.Argument(..., help="new pool folder to write (current format)"),
    codec: str = typer.Option("lz4_raw", "--codec", help="pixel codec: lz4_raw is the fastest, zstd the smallest (lz4_raw | zstd | raw)"),
) -> None:
    """Copy a pool into the current format (packed shards): same rows, same instance ids, same pixels."""
    from xpaste.errors import XPasteError
    from xpaste.pool.header import CODECS
    from xpaste.pool.tools import migrate

    if codec not in CODECS:
        raise XPasteError(f"--codec must be one of {', '.join(CODECS)}, got {codec!r}")
    with _existing_pool_hint(f"migrate writes a new pool: give a NEW folder that holds no pool, e.g. "
                             f"{_command('xpaste', 'pool', 'migrate', old, str(new).rstrip('/') + '_v2')}"):
        report = migrate(old, new, codec=codec, progress=True)
    typer.echo(f"{new}: {report.summary()}")
    for row, why in report.skipped[:20]:
        typer.echo(f"  skipped row {row}: {why}")


@pool_app.command("export-png", epilog=example("xpaste pool export-png pool/ --out cutouts/ --category cup --limit 50"))
def export_png_cmd(
    pool: Path = typer.Argument(..., help="pool folder"),
    out: Path = typer.Option(..., "--out", help="folder to write <category>/<instance id>.png into"),
    category: Optional[str] = typer.Option(None, "--category", help="only this category (id or name)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="write at most this many files"),
) -> None:
    """Write cut-outs as RGBA PNG files, to look at them in any image viewer."""
    from xpaste.pool.tools import export_png

    n = export_png(pool, out, category=category, limit=limit)
    typer.echo(f"{out}: {n} PNG files written")

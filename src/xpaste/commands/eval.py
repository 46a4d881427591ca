"""`xpaste eval`: COCO / LVIS AP of a predictions file, optionally side by side with a second one."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app, example


def _column_names(paths: list[Path]) -> list[str]:
    """Short, distinct column titles: file names, or the paths as given when two names collide."""
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    if len(set(names)) < len(names):  # the same file twice
        names = [f"{n} ({i + 1})" for i, n in enumerate(names)]
    return names


@app.command("eval", epilog=example(
    "xpaste eval --gt val.json --pred runs/base/results.json --compare runs/xpaste/results.json --iou-type segm"))
def eval_command(
    gt: Path = typer.Option(..., "--gt", help="Ground-truth COCO / LVIS instances json."),
    pred: Path = typer.Option(..., "--pred", help="Predictions: a json list of COCO result objects."),
    iou_type: str = typer.Option("segm", "--iou-type", help="segm: mask AP, bbox: box AP (segm | bbox)"),
    kind: str = typer.Option("auto", "--kind",
                             help="auto: LVIS when the categories carry 'frequency', else COCO (auto | lvis | coco)"),
    compare: Optional[Path] = typer.Option(None, "--compare",
                                           help="A second predictions file, shown beside the first with a delta."),
    max_dets: Optional[int] = typer.Option(None, "--max-dets", min=1, help="Detections per image.",
                                           show_default="300 for LVIS, 100 for COCO"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the metrics as json."),
    timeout: Optional[float] = typer.Option(
        None, "--timeout", min=0, help="Stop a library run after this many seconds, in one line (0: no limit).",
        show_default="120 + 0.002 per gt or predicted instance, ~10x an honest run"),
) -> None:
    """Mask or box AP (with APr/APc/APf on LVIS) computed by the official evaluation libraries."""
    from xpaste.evaluate.metrics import IOU_TYPES, KINDS, evaluate, format_table
    from xpaste.io import check_output, refuse_overlap, write_json_atomic

    if out is not None:
        refuse_overlap(out, {"the ground truth (--gt)": gt, "the predictions (--pred)": pred,
                             "the predictions (--compare)": compare}, out_is_file=True)
        check_output(out, "file")
    if iou_type not in IOU_TYPES:
        raise typer.BadParameter(f"choose one of {', '.join(IOU_TYPES)}", param_hint="--iou-type")
    if kind not in KINDS:
        raise typer.BadParameter(f"choose one of {', '.join(KINDS)}", param_hint="--kind")
    paths = [pred] + ([compare] if compare is not None else [])
    names = _column_names(paths)
    results = {name: evaluate(gt, path, iou_type=iou_type, kind=kind, max_dets=max_dets, timeout=timeout)
               for name, path in zip(names, paths)}
    first = results[names[0]]
    typer.echo(f"{first['kind'].upper()} {iou_type} AP (x100, maxDets={first['max_dets']}), gt: {gt}")
    typer.echo(format_table(results, delta=compare is not None))
    if out is not None:
        write_json_atomic(out, {
            "gt": str(gt), "kind": first["kind"], "iou_type": iou_type, "max_dets": first["max_dets"],
            "categories": [{"id": i, "name": n} for i, n in first["categories"].items()],  # read by `xpaste plan`
            "runs": [{"pred": str(path), "name": name, **{k: v for k, v in results[name].items() if k != "categories"}}
                     for name, path in zip(names, paths)],  # each with per_category: {id: AP, -1: nothing to score}
        }, indent=1)
        typer.echo(f"wrote {out}")

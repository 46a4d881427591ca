"""`xpaste plan`: the next round's per-category instance budget and paste weights, from per-category AP (the rule:
`xpaste.plan`, its one home)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xpaste.commands.app import app, example


@app.command("plan", epilog=example(
    "xpaste plan --metrics metrics.json --dataset train.json --pool pool/ --budget 2000 --out plan.json"))
def plan_command(
    metrics: Path = typer.Option(..., "--metrics", help="`xpaste eval --out` json with per-category AP"),
    dataset: Path = typer.Option(..., "--dataset", help="the training COCO/LVIS json (per-category image counts)"),
    pool: Optional[Path] = typer.Option(None, "--pool", help="the pool the new instances will join (its "
                                        "per-category counts); without it every category starts at 0"),
    budget: int = typer.Option(..., "--budget", min=0, help="new instances to generate in all"),
    out: Path = typer.Option(..., "--out", help="the plan json to write"),
    run: Optional[str] = typer.Option(None, "--run", help="which run of the metrics file (its name or pred path)",
                                      show_default="the first"),
    threshold: float = typer.Option(0.001, "--threshold", min=1e-9, max=1.0,
                                    help="repeat-factor threshold t: categories in fewer than this fraction of "
                                         "training images get a weight sqrt(t / f) > 1 (LVIS' value)"),
) -> None:
    """Split an instance budget over the categories where the detector is weak, and weight the paste to match.

    Per category: weight = max(1, sqrt(t / f)) x (1 - AP), LVIS' repeat factor times the AP gap.

    generate: the budget water-filled towards a pool proportional to the weights; sums to exactly --budget.

    paste_weight: weight / max weight, for augment --sampling weighted --plan PLAN and the adapters' plan=.
    """
    from xpaste.io import check_output, refuse_overlap, write_json_atomic
    from xpaste.plan import plan_from_files

    refuse_overlap(out, {"the metrics (--metrics)": metrics, "the dataset json (--dataset)": dataset,
                         "the pool (--pool)": pool}, out_is_file=True)
    check_output(out, "file")
    plan = plan_from_files(metrics, dataset, pool, budget, threshold=threshold, run=run)
    write_json_atomic(out, plan, indent=1)
    rows = plan["categories"]
    given = sum(r["generate"] for r in rows)
    top = sorted(rows, key=lambda r: (-r["generate"], r["id"]))[:5]
    typer.echo(f"{len(rows)} categories, {given} of {budget} instances planned; most: "
               + ", ".join(f"{r['name']} {r['generate']}" for r in top if r["generate"]) if given else
               f"{len(rows)} categories, nothing to generate")
    typer.echo(f"wrote {out}")

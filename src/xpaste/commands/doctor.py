"""`xpaste doctor`: load each configured model, run one small image through it, print what loaded, where, and how
fast (the checks: `xpaste.doctor`)."""
from __future__ import annotations

from pathlib import Path

import typer

from xpaste.commands.app import STATE, app, example


@app.command("doctor", epilog=example(
    "xpaste doctor --model stable-diffusion-v1-5/stable-diffusion-v1-5 --segmenter rembg:u2net --segmenter clipseg "
    "--clip ViT-L-14 --pretrained openai --device cuda",
    "xpaste doctor --config examples/pipeline.yaml"))
def doctor_cmd(
    model: list[str] | None = typer.Option(None, "--model", help="text-to-image model to check: a diffusers hub "
                                           "id or a local pipeline folder (repeatable; config key "
                                           "generate.models)"),
    segmenter: list[str] | None = typer.Option(None, "--segmenter", help="segmenter spec to check, as in "
                                               "`xpaste segment` (repeatable; config key segment.segmenters)"),
    clip: str | None = typer.Option(None, "--clip", help="CLIP model to check: ViT-L-14 | hf-hub:org/name | "
                                    "local-dir:/folder (config key score.clip)"),
    pretrained: str | None = typer.Option(None, "--pretrained", help="open_clip pretrained tag of --clip "
                                          "(config key score.pretrained)", show_default="openai"),
    device: str | None = typer.Option(None, "--device", help="cuda | cpu | cuda:1 ... for the generator and "
                                      "CLIP, as the pipeline's device key; segmenters choose theirs as the "
                                      "segment stage does (config key device)", show_default="cuda when available"),
    config: Path | None = typer.Option(None, "--config", help="pipeline YAML whose models are checked "
                                       "(generate.models when enabled, segment.segmenters, score.clip unless null, "
                                       "device); a flag replaces its key"),
    repeat: int = typer.Option(2, "--repeat", min=1, max=100, help="times the image runs through each model; "
                               "s/image is the last run (the first includes warm-up)"),
) -> None:
    """Check that the pipeline's models load and run: one small synthetic image through each, in seconds.

    Each model is built by the backend code its stage uses, so a hub id that is not cached fails offline in the
    stage's one line. One row per model: kind, spec, device, load seconds, seconds per image, what ran (the
    generator: one step at the smallest size it takes, 64 x 64 for SD; segmenters and CLIP: a 64 x 64 image) and
    ok or failed with the reason. Every model is checked even after a failure. Exit 0 when all are ok, 2 when any
    failed.

    With no --model, --segmenter or --clip: the models of --config, else the pipeline's defaults (SD 1.5,
    grabcut + rembg:u2net + clipseg, ViT-L-14 openai). Without --config, only the kinds given are checked.
    """
    from xpaste.doctor import run_doctor, summary, targets_from

    targets, chosen_device = targets_from(config, model or (), segmenter or (), clip, pretrained, device)
    rows = run_doctor(targets, device=chosen_device, repeat=repeat, echo=typer.echo, debug=STATE["debug"])
    typer.echo(summary(rows))
    if any(not r.ok for r in rows):
        raise typer.Exit(2)

"""`xpaste doctor`: load every model a pipeline would use, run one small image through each, report in a table.

A smoke check for users with weights: in about a minute it says what loaded, on which device, how long the load
took and how long one image took, before any stage has run (without it the first sign of a wrong model id is a
failed stage). Each model is built through the backend code the stages use, with the stages' arguments:

- generate: `build_generator("diffusers", model=..., device=<device>, scheduler/guidance/negative_prompt of the
  config)`, then one image of one step at the smallest size the model takes (`generator_size`: 64 x 64, or the
  smallest multiple of the model's size step above it, e.g. 64 for SD 1.x/2.x and SDXL);
- segment: `build_segmenter(spec)`, exactly as the segment stage (which passes no device: each backend picks
  CUDA when available, rembg's onnxruntime picks its own providers), on a 64 x 64 synthetic image;
- clip: `SCORERS["clip"](clip, pretrained, device=<device>)` as the score stage, scoring that image's cut-out
  against `a photo of object`.

So a hub id that is not cached fails offline in the same one line as in the stages (`xpaste.hub`), and its row
says so while the other models are still checked. The backend's library is imported before the load timer
starts, so "load s" is the model's own load (files read, weights moved to the device). The image runs `repeat`
times and "s/image" is the last run (the first includes warm-up: CUDA kernels, caches, lazy allocation).
"""
from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpaste.errors import XPasteError
from xpaste.hub import first_line

#: Side of the synthetic image every segmenter and CLIP see, and the generator's smallest size.
IMAGE_SIZE = 64
#: The category name the image is said to show (CLIPSeg, SAM 3 and CLIP read it).
PROMPT_NAME = "object"
#: The generator's prompt.
GENERATE_PROMPT = "a photo of a single object"

KINDS = ("generate", "segment", "clip")


@dataclass
class Target:
    """One model to check: kind ("generate" | "segment" | "clip"), the spec as the user wrote it, the options the
    stage would build it with."""

    kind: str
    spec: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """The outcome of one check: `error` is None when the model loaded and ran."""

    kind: str
    spec: str
    device: str = "-"
    load_s: float | None = None
    per_image_s: float | None = None
    ran: str = "-"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else f"failed: {self.error}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "spec": self.spec, "status": "ok" if self.ok else "failed", "error": self.error,
                "device": self.device, "load_s": self.load_s, "per_image_s": self.per_image_s, "ran": self.ran}


# ------------------------------------------------------------------------------------------------ what to check
def targets_from(config_file=None, models=(), segmenters=(), clip: str | None = None, pretrained: str | None = None,
                 device: str | None = None) -> tuple[list[Target], str | None]:
    """The models to check and the device, from a pipeline config and flags (checked as `xpaste run` checks them:
    one line naming the bad key or flag).

    With none of models, segmenters and clip given, every kind comes from the config (`config_file`, else the
    defaults): generate.models when generate is enabled, segment.segmenters, score.clip unless null. A kind given
    by flags replaces the config's; without a config file only the kinds given are checked."""
    from xpaste.stages.config import load_config

    models, segmenters = [str(m) for m in models or ()], [str(s) for s in segmenters or ()]
    update: dict = {}
    labels: dict[str, str] = {}
    if models:
        update.setdefault("generate", {})["models"] = models
        labels["generate.models"] = "--model"
    if segmenters:
        update.setdefault("segment", {})["segmenters"] = segmenters
        labels["segment.segmenters"] = "--segmenter"
    if clip is not None:
        update.setdefault("score", {})["clip"] = clip
        labels["score.clip"] = "--clip"
    if pretrained is not None:
        update.setdefault("score", {})["pretrained"] = pretrained
        labels["score.pretrained"] = "--pretrained"
    if device is not None:
        update["device"] = device
        labels["device"] = "--device"
    cfg = load_config(config_file, updates=[update] if update else None, labels=labels).to_dict()
    given = {"generate": bool(models), "segment": bool(segmenters), "clip": clip is not None}
    every = config_file is not None or not any(given.values())
    g, s = cfg["generate"], cfg["score"]
    targets: list[Target] = []
    if given["generate"] or (every and g["enabled"]):
        opts = {"scheduler": g["scheduler"], "guidance": float(g["guidance"]), "negative_prompt": g["negative_prompt"]}
        targets += [Target("generate", m, opts) for m in g["models"]]
    if given["segment"] or every:
        targets += [Target("segment", spec) for spec in cfg["segment"]["segmenters"]]
    if (given["clip"] or every) and s["clip"] is not None:
        targets.append(Target("clip", s["clip"], {"pretrained": s["pretrained"]}))
    return targets, cfg["device"]


# ------------------------------------------------------------------------------------------------ the image
def synthetic_image(size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size, 3) uint8 RGB image, a red disc on a grey gradient, and its (size, size) uint8 mask."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy + 0.5 - size / 2) ** 2 + (xx + 0.5 - size / 2) ** 2 < (size * 0.3) ** 2
    grey = (96 + 64 * xx / max(1, size - 1)).astype(np.uint8)
    image = np.stack([grey, grey, grey], axis=-1)
    image[disc] = (200, 40, 40)
    return image, (disc * 255).astype(np.uint8)


def generator_size(pipe, floor: int = IMAGE_SIZE) -> int:
    """The smallest square side >= `floor` that the diffusers pipeline takes: a multiple of its VAE's scale
    factor times the UNet's total downsampling (2 ** (levels - 1)) or the transformer's patch size (8 x 8 = 64
    for SD 1.x/2.x, 8 x 4 = 32 for SDXL, 8 x 2 = 16 for SD 3 / FLUX), and of 8 (`DiffusersGenerator`)."""
    scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)
    unet, transformer = getattr(pipe, "unet", None), getattr(pipe, "transformer", None)
    if unet is not None and getattr(unet.config, "block_out_channels", None):
        step = scale * 2 ** (len(unet.config.block_out_channels) - 1)
    elif transformer is not None and getattr(transformer.config, "patch_size", None):
        step = scale * int(transformer.config.patch_size)
    else:
        step = scale * 8
    step = math.lcm(max(1, step), 8)
    return max(step, -(-int(floor) // step) * step)


# ------------------------------------------------------------------------------------------------ one check
def _sync() -> None:
    """Wait for queued CUDA work, so the timer measures it (nothing to do without torch or CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _free() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextmanager
def _no_progress_bars():
    """No "Loading weights" bars from transformers / diffusers while a model loads (they would break the table
    on a terminal); restored after."""
    restore = []
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None and module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def _torch_device(model) -> str:
    device, dtype = getattr(model, "device", None), getattr(model, "dtype", None)
    if device is None:
        return "-"
    text = str(device)
    if dtype is not None:
        text += " " + {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(
            str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch."))
    return text


def _segmenter_device(segmenter) -> str:
    session = getattr(getattr(segmenter, "session", None), "inner_session", None)
    if session is not None:  # rembg: onnxruntime's first provider does the work
        providers = list(session.get_providers())
        first = providers[0] if providers else "?"
        return {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
                "TensorrtExecutionProvider": "tensorrt"}.get(first, first.removesuffix("ExecutionProvider").lower())
    if getattr(segmenter, "device", None) is not None:
        return _torch_device(segmenter)
    return "cpu"  # grabcut (OpenCV)


class _Backend:
    """How each kind is imported, built, run and checked."""

    def __init__(self, target: Target, device: str | None):
        self.target, self.device = target, device

    def import_backend(self):
        kind, spec = self.target.kind, self.target.spec
        if kind == "generate":
            from xpaste.generate import generator_class

            return generator_class("diffusers")
        if kind == "segment":
            from xpaste.segment import segmenter_class

            return segmenter_class(spec)
        from xpaste.registry import load_backend
        from xpaste.score import SCORERS

        return load_backend(SCORERS["clip"], "clip")

    def build(self, cls):
        t = self.target
        if t.kind == "generate":  # as stages.generate.GenerateStage._generator_for, with 1 step at a small size
            return cls(model=t.spec, device=self.device, steps=1, height=IMAGE_SIZE, width=IMAGE_SIZE,
                       batch_size=1, **t.options)
        if t.kind == "segment":  # as stages.segment.SegmentStage: the spec alone
            from xpaste.segment import build_segmenter

            return build_segmenter(t.spec)
        return cls(t.spec, t.options.get("pretrained"), device=self.device, batch_size=1)  # as stages.score

    def describe(self, model) -> tuple[str, str]:
        """(device, what one run does)."""
        kind = self.target.kind
        if kind == "generate":
            side = generator_size(model.pipe)
            model.height = model.width = side
            return _torch_device(model), f"{side}x{side}, 1 step"
        if kind == "segment":
            return _segmenter_device(model), f"{IMAGE_SIZE}x{IMAGE_SIZE}"
        return _torch_device(model), f"{IMAGE_SIZE}x{IMAGE_SIZE}"

    def run_once(self, model) -> str | None:
        """Run the image through `model`; the reason the output is wrong, or None."""
        kind = self.target.kind
        image, mask = synthetic_image()
        if kind == "generate":
            out = model.generate([GENERATE_PROMPT], [0])
            want = (model.height, model.width, 3)
            if len(out) != 1 or np.asarray(out[0]).shape != want or np.asarray(out[0]).dtype != np.uint8:
                return f"returned {_shapes(out)}, expected one {want} uint8 image"
            return None
        if kind == "segment":
            out = model.segment([image], [PROMPT_NAME])
            want = image.shape[:2]
            if len(out) != 1 or np.asarray(out[0]).shape != want or np.asarray(out[0]).dtype != np.uint8:
                return f"returned {_shapes(out)}, expected one {want} uint8 mask"
            return None
        scores = np.asarray(model.score_cutouts([image], [mask], [PROMPT_NAME]))
        if scores.shape != (1,) or not np.all(np.isfinite(scores)):
            return f"returned the scores {scores.tolist()}, expected one finite score"
        return None


def _shapes(out) -> str:
    try:
        return "[" + ", ".join(f"{np.asarray(o).shape} {np.asarray(o).dtype}" for o in out) + "]"
    except Exception:  # noqa: BLE001 - only used to describe a wrong answer
        return repr(type(out).__name__)


def _reason(e: BaseException) -> str:
    if isinstance(e, XPasteError):
        return " ".join(str(e).split())
    return f"{type(e).__name__}: {first_line(e)}"


def check(target: Target, device: str | None = None, repeat: int = 2, debug: bool = False) -> Row:
    """Load `target`'s model through its stage's backend code, run the synthetic image `repeat` times; a Row.
    Any failure becomes the row's one-line reason (`debug`: exceptions other than XPasteError are raised)."""
    from xpaste.pipeline.determinism import restore_threads

    row = Row(target.kind, target.spec)
    backend = _Backend(target, device)
    model = None
    try:
        cls = backend.import_backend()
        start = time.perf_counter()
        with _no_progress_bars():
            model = backend.build(cls)
        _sync()
        row.load_s = time.perf_counter() - start
        restore_threads()  # as the stages: a backend's import may change torch's thread count
        row.device, row.ran = backend.describe(model)
        for _ in range(max(1, int(repeat))):
            start = time.perf_counter()
            wrong = backend.run_once(model)
            _sync()
            row.per_image_s = time.perf_counter() - start
            if wrong:
                row.error = wrong
                break
    except KeyboardInterrupt:
        raise
    except Exception as e:
        if debug and not isinstance(e, XPasteError):
            raise
        row.error = _reason(e)
    finally:
        del model
        _free()
    return row


# ------------------------------------------------------------------------------------------------ the table
HEADER = ("kind", "spec", "device", "load s", "s/image", "ran", "status")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class Table:
    """Rows printed as they come, in columns sized from the specs known up front."""

    def __init__(self, targets: list[Target], echo: Callable[[str], None]):
        self.echo = echo
        self.widths = (8, max([len(HEADER[1])] + [len(t.spec) for t in targets]), 10, 7, 8, 14)

    def line(self, cells) -> str:
        *fixed, status = cells
        parts = []
        for i, (cell, width) in enumerate(zip(fixed, self.widths)):
            parts.append(cell.rjust(width) if i in (3, 4) else cell.ljust(width))
        return "  ".join(parts + [status]).rstrip()

    def header(self) -> None:
        self.echo(self.line(HEADER))

    def row(self, row: Row) -> None:
        self.echo(self.line((row.kind, row.spec, row.device, _seconds(row.load_s), _seconds(row.per_image_s),
                             row.ran, row.status)))


def run_doctor(targets: list[Target], device: str | None = None, repeat: int = 2,
               echo: Callable[[str], None] = print, debug: bool = False) -> list[Row]:
    """Check every target in order, printing the table as it goes; the rows."""
    table = Table(targets, echo)
    table.header()
    rows = []
    for target in targets:
        row = check(target, device=device, repeat=repeat, debug=debug)
        table.row(row)
        rows.append(row)
    return rows


def summary(rows: list[Row]) -> str:
    failed = [r for r in rows if not r.ok]
    if not rows:
        return "nothing to check"
    if not failed:
        return ("the model loaded and ran" if len(rows) == 1 else f"all {len(rows)} models loaded and ran") + \
            ": the pipeline is ready"
    return f"{len(failed)} of {len(rows)} models failed: " + ", ".join(f"{r.kind} {r.spec}" for r in failed)

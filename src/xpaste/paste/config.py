"""`PasteConfig`: the one home of every paste option and its default.

`CopyPaste`, the `augment` command's flags, the detectron2 config node, the mmdet transform and the
ultralytics hook are all derived from the fields below (name, type, default, help, choices), so no option
is spelled or defaulted twice. A configuration is validated when it is built: a bad value raises
`PasteConfigError` (an `XPasteError` and a `ValueError`) in one line naming the option.

Sources of the defaults (method.md, Stage 4; X-Paste reference code):
- count uniform in [0, max_paste) with max_paste = 20 (paper ablation: 10 < 20 > 30);
- class-balanced sampling; hard blending; horizontal flip with probability 0.5;
- scale s = clip(Normal(mean, std), min_object_px / H, max_scale) of the category's scale prior, aspect
  ratio jittered by U(0.8, 1.2), objects under 5 px dropped;
- the pasted mask is alpha > 0 after resizing (`alpha_threshold` = 0; 127 keeps alpha >= 128);
- an occluded object is dropped unless its box moved <= 10 px on every side or > 300 px of mask remain,
  checked after each paste.
Categories without a prior (not in the training set the prior was measured on) use `no_prior_scale`:
'canvas' (xpaste's rule, no paper source: s ~ U(uniform_scale) of the canvas, like the prior's s) or
'cutout' (DiverGen: the cut-out's own size times U(uniform_scale), at least 3 px a side).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from xpaste.errors import XPasteError
from xpaste.pool.sampler import SAMPLING_MODES

BLEND_MODES = ("hard", "alpha", "gaussian", "poisson")
NO_PRIOR_RULES = ("canvas", "cutout")
PRESETS = ("xpaste", "divergen")


class PasteConfigError(XPasteError, ValueError):
    """A paste option with a wrong type or value (raised when the configuration is built)."""


def _opt(default: Any, help: str, choices: tuple | None = None, cli: bool = True):
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


@dataclass(frozen=True)
class PasteConfig:
    """Every paste option (units: pixels, fractions of the canvas side, degrees). Frozen and validated."""

    max_paste: int = _opt(20, "paste count ~ U[0, max_paste) per image (X-Paste: 20)")
    num_paste: typing.Optional[int] = _opt(None, "fixed paste count instead of drawing it")
    sampling: str = _opt("balanced", "which pool instances: balanced (X-Paste), uniform, present, weighted",
                         SAMPLING_MODES)
    no_prior_scale: str = _opt("canvas", "size rule for categories without a scale prior: canvas "
                               "(s ~ U(uniform_scale) of the canvas) or cutout (DiverGen: cut-out size x "
                               "U(uniform_scale), min 3 px)", NO_PRIOR_RULES)
    uniform_scale: tuple[float, float] = _opt((0.05, 0.3), "range of the no-prior scale factor")
    max_scale: float = _opt(0.5, "upper clip of the sqrt-area fraction s (X-Paste: 0.5)")
    min_object_px: float = _opt(10.0, "lower clip of s, in pixels of the canvas height (X-Paste: 10)")
    min_size_px: int = _opt(5, "drop a pasted object whose width or height is under this (X-Paste: 5)")
    aspect_jitter: tuple[float, float] = _opt((0.8, 1.2), "aspect ratio factor ~ U(low, high) (X-Paste)")
    flip_prob: float = _opt(0.5, "probability of a horizontal flip of each pasted object")
    max_rotation: float = _opt(0.0, "rotation ~ U(-deg, deg); 0 disables it (X-Paste: off)")
    color_jitter: float = _opt(0.0, "brightness/contrast/saturation factors ~ U(1 - f, 1 + f); 0 disables")
    blend: str = _opt("hard", "blending of pasted pixels (X-Paste: hard)", BLEND_MODES)
    blend_sigma: float = _opt(1.0, "Gaussian blend: sigma of the mask blur, pixels")
    alpha_threshold: int = _opt(0, "pasted mask = alpha > this after resizing (X-Paste: 0; 127 = alpha >= 128)")
    box_tolerance: float = _opt(10.0, "keep an occluded object if its box moved <= this many px on every side")
    min_visible_area: int = _opt(300, "... or if more than this many mask pixels remain (X-Paste: 300)")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), _HINTS[f.name]))
        choices = {f.name: f.metadata["choices"] for f in dataclasses.fields(self) if f.metadata["choices"]}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise PasteConfigError(f"paste option {name}={getattr(self, name)!r} is not one of {allowed}")
        checks = [
            (self.max_paste >= 1, "max_paste must be >= 1 (the count is drawn from [0, max_paste))"),
            (self.num_paste is None or self.num_paste >= 0, "num_paste must be >= 0"),
            (0 < self.uniform_scale[0] <= self.uniform_scale[1], "uniform_scale must be 0 < low <= high"),
            (0 < self.max_scale <= 1, "max_scale must be in (0, 1]"),
            (self.min_object_px >= 0, "min_object_px must be >= 0"),
            (self.min_size_px >= 1, "min_size_px must be >= 1"),
            (0 < self.aspect_jitter[0] <= self.aspect_jitter[1], "aspect_jitter must be 0 < low <= high"),
            (0 <= self.flip_prob <= 1, "flip_prob must be in [0, 1]"),
            (0 <= self.max_rotation <= 180, "max_rotation must be in [0, 180] degrees"),
            (0 <= self.color_jitter < 1, "color_jitter must be in [0, 1)"),
            (self.blend_sigma > 0, "blend_sigma must be > 0"),
            (0 <= self.alpha_threshold <= 254, "alpha_threshold must be in [0, 254]"),
            (self.box_tolerance >= 0, "box_tolerance must be >= 0"),
            (self.min_visible_area >= 0, "min_visible_area must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise PasteConfigError(message)

    # ------------------------------------------------------------------ construction
    @classmethod
    def preset(cls, name: str = "xpaste", **overrides: Any) -> PasteConfig:
        """The documented bundle of a paper: 'xpaste' (the defaults) or 'divergen' (DiverGen's fallback size
        rule for categories without a prior); `overrides` win over the bundle."""
        if name not in PRESETS:
            raise PasteConfigError(f"unknown preset {name!r}; choose one of {PRESETS}")
        bundle = {"divergen": {"no_prior_scale": "cutout"}}.get(name, {})
        return cls.from_dict({**bundle, **overrides})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PasteConfig:
        """Build from a mapping (json/yaml/kwargs); unknown keys raise PasteConfigError naming them."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise PasteConfigError(f"unknown paste option(s) {unknown}; known: {', '.join(cls.field_names())}")
        return cls(**data)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def options(cls) -> list[dict[str, Any]]:
        """One dict per option for front-ends (CLI flags, framework config nodes): name, flag, type, default,
        help, choices. `type` is the Python type of a value (`int`, `float`, `str`, `tuple`, `int | None`)."""
        out = []
        for f in dataclasses.fields(cls):
            out.append({"name": f.name, "flag": "--" + f.name.replace("_", "-"), "type": _HINTS[f.name],
                        "default": f.default, "help": f.metadata["help"], "choices": f.metadata["choices"]})
        return out

    def replace(self, **changes: Any) -> PasteConfig:
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise PasteConfigError(f"unknown paste option(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain json-able values (tuples as lists): what fingerprints and logs record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_HINTS = typing.get_type_hints(PasteConfig)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check one value against its annotation with the package's one set of coercion rules
    (`xpaste.typed.coerce`: lossless conversions only, e.g. '3' -> 3, 1 -> 1.0, '0.8,1.2' -> (0.8, 1.2));
    anything else raises PasteConfigError naming the option."""
    from xpaste.typed import ConfigError, coerce

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        return None
    try:
        out = coerce(f"paste.{name}", value, hint, {"split": ","})
    except ConfigError as e:
        raise PasteConfigError(e.message) from None
    if origin is tuple and len(out) != len(args):
        raise PasteConfigError(f"paste option {name} must be a pair like 0.8,1.2, got {value!r}")
    return out

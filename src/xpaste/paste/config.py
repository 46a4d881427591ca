"""`PasteConfig`: the one home of every paste option and its default.

`CopyPaste`, the `augment` command's flags, the detectron2 config node, the mmdet transform and the
ultralytics hook are all derived from the fields below (name, type, default, help, choices), so no option
is spelled or defaulted twice. A configuration is validated when it is built, by the bounds and choices on
each field (`xpaste.typed.key_field`, the one option style of every configuration): a bad value raises
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
from dataclasses import dataclass
from typing import Any, Mapping

from xpaste.errors import XPasteError
from xpaste.pool.sampler import SAMPLING_MODES
from xpaste.typed import ConfigError, check_range, coerce, key_field

#: numpy, Arrow and the shard tables hold counts, sizes and seeds as int64
INT64_MAX = 2**63 - 1

BLEND_MODES = ("hard", "alpha", "gaussian", "poisson")
NO_PRIOR_RULES = ("canvas", "cutout")
PRESETS = ("xpaste", "divergen")


class PasteConfigError(XPasteError, ValueError):
    """A paste option with a wrong type or value (raised when the configuration is built); `option` names the
    field when one option is at fault (front-ends name their flag or key with it), else None."""

    option: str | None = None


@dataclass(frozen=True)
class PasteConfig:
    """Every paste option (units: pixels, fractions of the canvas side, degrees). Frozen and validated."""

    max_paste: int = key_field(20, "paste count ~ U[0, max_paste) per image (X-Paste: 20)", lo=1, hi=INT64_MAX)
    num_paste: typing.Optional[int] = key_field(None, "fixed paste count instead of drawing it", lo=0, hi=INT64_MAX)
    sampling: str = key_field("balanced", "which pool instances: balanced (X-Paste), uniform, present, weighted",
                              choices=SAMPLING_MODES)
    no_prior_scale: str = key_field("canvas", "size rule for categories without a scale prior: canvas "
                                    "(s ~ U(uniform_scale) of the canvas) or cutout (DiverGen: cut-out size x "
                                    "U(uniform_scale), min 3 px)", choices=NO_PRIOR_RULES)
    uniform_scale: tuple[float, float] = key_field((0.05, 0.3), "range of the no-prior scale factor", gt=0)
    max_scale: float = key_field(0.5, "upper clip of the sqrt-area fraction s (X-Paste: 0.5)", gt=0, hi=1)
    min_object_px: float = key_field(10.0, "lower clip of s, in pixels of the canvas height (X-Paste: 10)", lo=0)
    min_size_px: int = key_field(5, "drop a pasted object whose width or height is under this (X-Paste: 5)", lo=1,
                                 hi=INT64_MAX)
    aspect_jitter: tuple[float, float] = key_field((0.8, 1.2), "aspect ratio factor ~ U(low, high) (X-Paste)", gt=0)
    flip_prob: float = key_field(0.5, "probability of a horizontal flip of each pasted object", lo=0, hi=1)
    max_rotation: float = key_field(0.0, "rotation ~ U(-deg, deg); 0 disables it (X-Paste: off)", lo=0, hi=180)
    color_jitter: float = key_field(0.0, "brightness/contrast/saturation factors ~ U(1 - f, 1 + f); 0 disables",
                                    lo=0, lt=1)
    blend: str = key_field("hard", "blending of pasted pixels (X-Paste: hard)", choices=BLEND_MODES)
    blend_sigma: float = key_field(1.0, "Gaussian blend: sigma of the mask blur, pixels", gt=0)
    alpha_threshold: int = key_field(0, "pasted mask = alpha > this after resizing (X-Paste: 0; 127 = alpha >= 128)",
                                     lo=0, hi=254)
    box_tolerance: float = key_field(10.0, "keep an occluded object if its box moved <= this many px on every side",
                                     lo=0)
    min_visible_area: int = key_field(300, "... or if more than this many mask pixels remain (X-Paste: 300)", lo=0,
                                      hi=INT64_MAX)

    def __post_init__(self) -> None:
        """Each value coerced to its field's type and checked against the bounds and choices on its field
        (`xpaste.typed`, the rules of every configuration), then the pairs' order (low <= high)."""
        for f in dataclasses.fields(self):
            try:
                value = _coerce(f.name, getattr(self, f.name), _HINTS[f.name])
                check_range(f"paste.{f.name}", value, f.metadata)
            except (ConfigError, PasteConfigError) as e:
                raise _error(e.message, f.name, e.hint) from None
            object.__setattr__(self, f.name, value)
        for name in ("uniform_scale", "aspect_jitter"):
            low, high = getattr(self, name)
            if low > high:
                raise _error(f"paste option {name} must be a pair low,high with low <= high, got {low},{high}", name)

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
    def from_config_value(cls, value: Any, key: str) -> PasteConfig:
        """A config file's paste section (`augment.paste` of `xpaste run`): None -> the defaults, a mapping ->
        `from_dict`, a PasteConfig as it is; anything else, or a bad option, raises ConfigError naming `key`."""
        if value is None or isinstance(value, PasteConfig):
            return value if value is not None else cls()
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key} must be a mapping of paste options, got {value!r}")
        try:
            return cls.from_dict(value)
        except XPasteError as e:
            raise ConfigError(f"config key {key}: {e.message}", hint=e.hint) from None

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


def _error(message: str, option: str, hint: str | None = None) -> PasteConfigError:
    error = PasteConfigError(message, hint=hint)
    error.option = option
    return error


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Check one value against its annotation with the package's one set of coercion rules
    (`xpaste.typed.coerce`: lossless conversions only, e.g. '3' -> 3, 1 -> 1.0, '0.8,1.2' -> (0.8, 1.2));
    anything else raises PasteConfigError naming the option."""
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

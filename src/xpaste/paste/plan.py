"""The paste plan: every random choice of one Copy-Paste call, drawn up front.

Applying a plan is deterministic, so a plan can be logged, replayed and tested on its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from xpaste.paste.config import BLEND_MODES, PasteConfig


@dataclass(frozen=True)
class PasteOp:
    """One object to paste. Sizes are of the cut-out after resizing and before rotation."""

    pool_row: int
    category_id: int
    center_x: int  # centre of the (transformed) cut-out on the canvas; may lie near or on the border
    center_y: int
    width: int
    height: int
    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise
    color: tuple[float, float, float] | None = None  # brightness, contrast, saturation factors


@dataclass(frozen=True)
class PastePlan:
    canvas_height: int
    canvas_width: int
    ops: tuple[PasteOp, ...] = field(default_factory=tuple)
    blend: str = PasteConfig.blend  # the defaults are PasteConfig's (one home)
    blend_sigma: float = PasteConfig.blend_sigma

    def __post_init__(self) -> None:
        if self.blend not in BLEND_MODES:
            raise ValueError(f"unknown blend mode {self.blend!r}; choose one of {BLEND_MODES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PastePlan:
        ops = []
        for op in data.get("ops", []):
            op = dict(op)
            if op.get("color") is not None:
                op["color"] = tuple(op["color"])
            ops.append(PasteOp(**op))
        return cls(int(data["canvas_height"]), int(data["canvas_width"]), tuple(ops),
                   data.get("blend", PasteConfig.blend), float(data.get("blend_sigma", PasteConfig.blend_sigma)))

"""Foreground segmenters, reached through registry strings so that importing this package stays light.

`build_segmenter("rembg:u2net")` imports the backend module only then: torch, transformers, OpenCV and
rembg are never imported by `import xpaste.segment`.
"""
from __future__ import annotations


from xpaste.errors import XPasteError
from xpaste.registry import load_backend
from xpaste.segment.base import BINARY_THRESHOLD, BoxSegmenter, Segmenter, binarize, normalize_soft

#: name -> "module:Class"; the optional part after ":" in a spec is the backend's first argument.
SEGMENTERS: dict[str, str] = {
    "grabcut": "xpaste.segment.grabcut:GrabCutSegmenter",
    "clipseg": "xpaste.segment.clipseg:CLIPSegSegmenter",
    "rembg": "xpaste.segment.rembg_backend:RembgSegmenter",
    "sam": "xpaste.segment.sam:SamSegmenter",
    "sam2": "xpaste.segment.sam:Sam2Segmenter",
    "sam3": "xpaste.segment.sam3:Sam3Segmenter",
}

# Which pip extra provides the heavy imports of each backend (for the ImportError message).
_EXTRAS = {"grabcut": "segment", "clipseg": "segment", "rembg": "segment", "sam": "segment", "sam2": "segment",
           "sam3": "segment"}

__all__ = ["SEGMENTERS", "BINARY_THRESHOLD", "Segmenter", "BoxSegmenter", "binarize", "normalize_soft", "build_segmenter",
           "parse_spec", "segmenter_class"]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split "name" or "name:arg" (arg may itself contain ":" or "/", e.g. a path) into (name, arg)."""
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in SEGMENTERS:
        raise XPasteError(f"unknown segmenter {spec!r}",
                          hint=f"choose one of {', '.join(sorted(SEGMENTERS))}, optionally as name:model")
    return name, (arg if sep and arg else None)


def segmenter_class(spec: str) -> type:
    """The backend class of a spec (its module imported, nothing built): e.g. to check, before a model loads,
    that it offers box prompts (`segment_boxes`, the optional `BoxSegmenter` protocol)."""
    name, _ = parse_spec(spec)
    return load_backend(SEGMENTERS[name], _EXTRAS.get(name, "segment"))


def build_segmenter(spec: str, *, device: str | None = None, **kwargs) -> Segmenter:
    """Build a segmenter from "name" or "name:arg" ("rembg:u2net", "rembg:/m.onnx", "clipseg:/folder",
    "sam3:facebook/sam3", "sam2:/folder").

    The arg is passed as the backend's first positional argument; kwargs go to its constructor. `device`
    (the run's `device` key: "cuda", "cpu", "cuda:1"; None: the backend's choice) goes to the backends whose
    constructor takes one (the torch models: clipseg, sam, sam2, sam3); GrabCut and rembg (onnxruntime picks
    its providers) run where they run.
    """
    import inspect

    name, arg = parse_spec(spec)
    cls = load_backend(SEGMENTERS[name], _EXTRAS[name])
    if device is not None and "device" in inspect.signature(cls).parameters:
        kwargs["device"] = device
    return cls(arg, **kwargs) if arg is not None else cls(**kwargs)

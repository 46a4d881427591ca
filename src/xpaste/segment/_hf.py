"""Loading a transformers model + processor pair by hub id or local folder, offline-safe (xpaste.hub).

Shared by the SAM-family backends (`sam.py`, `sam3.py`). Light on purpose: only the standard library and
xpaste at import; the model and processor classes are passed in by the backend that imported them.
"""
from __future__ import annotations

import os

from xpaste.errors import XPasteError
from xpaste.hub import check_model_source, first_line, looks_like_path


def short_name(prefix: str, model: str, default: str) -> str:
    """The segmenter's recorded name: "sam3" for the default model, "sam3:<last path part>" otherwise."""
    if model == default:
        return prefix
    return f"{prefix}:{os.path.basename(os.path.normpath(model))}"


def load_pair(model: str, model_cls, processor_cls, *, what: str, hint: str):
    """(processor, model) from a hub id or a folder holding both (`save_pretrained` of each into it).

    A missing folder, or a hub id that cannot be loaded (offline and not cached), fails in one line naming the
    model and `hint` (how to pass a local folder) before anything is read; `check_hub_model` decides in seconds.
    """
    cache_only = check_model_source(model, what=what, files=["config.json"], hint=hint)
    source = os.path.expanduser(model) if looks_like_path(model) else model
    try:
        processor = processor_cls.from_pretrained(source, local_files_only=cache_only)
        net = model_cls.from_pretrained(source, local_files_only=cache_only)
    except (OSError, ValueError, KeyError, TypeError) as e:
        # Offline hub ids fail with OSError, malformed ids with huggingface_hub's ValueError; a folder holding
        # another model type raises ValueError/KeyError/TypeError from the config or processor classes.
        why = first_line(e) + (" (offline: read from the local cache only)" if cache_only else "")
        raise XPasteError(f"could not load {what} {model!r}: {why}",
                          hint=f"{hint}; or download it once while online") from None
    return processor, net


def pick_device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

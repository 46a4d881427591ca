"""CLIPSeg (transformers): text-prompted segmentation, prompted with `a photo of {name}`.

CLIPSeg is the one X-Paste segmenter that knows *what* to cut out, which matters when a generated
image shows the object together with props. The model works at a fixed square resolution (352 for
the released checkpoint); its logits are turned into probabilities, resized back to each image and
min-max normalised per image to 0-255 (method.md, Stage 2: X-Paste prompts CLIPSeg with
`a photo of {name}` and normalises every segmenter's output per image before binarising at > 128).
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

from xpaste.errors import XPasteError
from xpaste.hub import LOCAL_HINTS, check_model_source, first_line, looks_like_path
from xpaste.ops.masks import normalize_soft
from xpaste.segment.base import check_batch

DEFAULT_MODEL = "CIDAS/clipseg-rd64-refined"
#: X-Paste's CLIPSeg text (method.md, Stage 2); `{name}` is the category name with underscores as spaces.
PROMPT_TEMPLATE = "a photo of {name}"


_HINT = f"{LOCAL_HINTS['clipseg']} (Python: CLIPSegSegmenter('/path/to/folder'))"


def check_model(model: str = DEFAULT_MODEL) -> bool:
    """In seconds, before loading: True when hub id `model` must be read from the local cache (the hub is
    unreachable, the files are cached), False when it can load normally (a folder, or the hub answers).
    Raises XPasteError in one line when it cannot load (xpaste.hub): no retries for minutes."""
    return check_model_source(model, what="CLIPSeg model", files=["config.json"], hint=_HINT)


class CLIPSegSegmenter:
    """Soft masks from CLIPSeg logits: sigmoid, bilinear resize to the image size, min-max 0-255 per image.

    segment(images, prompts): prompts are category names ("baseball_bat" or "baseball bat"); each becomes
        `prompt_template.format(name=...)` with underscores as spaces (default `a photo of {name}`).

    model: a hub id (default CIDAS/clipseg-rd64-refined) or a folder holding both the model and the
        processor (`save_pretrained` of each into the same folder).
    device: "cuda"/"cpu"/...; None picks CUDA when available. fp16 is used on CUDA.
    batch_size: images per forward pass.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 8,
                 fp16: bool | None = None, name: str | None = None, prompt_template: str = PROMPT_TEMPLATE):
        self.model_id = model
        self.prompt_template = prompt_template
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        use_fp16 = (self.device.type == "cuda") if fp16 is None else fp16
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.batch_size = int(batch_size)
        if model == DEFAULT_MODEL:
            self.name = name or "clipseg"
        else:
            self.name = name or f"clipseg:{os.path.basename(os.path.normpath(model))}"
        self.processor, self.model = self._load(model)

    def _load(self, model: str):
        cache_only = check_model(model)  # in seconds: a missing folder, or a hub id that cannot load, fails here
        local = looks_like_path(model)
        path = os.path.expanduser(model)
        try:
            processor = CLIPSegProcessor.from_pretrained(path if local else model, local_files_only=cache_only)
            net = CLIPSegForImageSegmentation.from_pretrained(path if local else model, local_files_only=cache_only)
        except (OSError, ValueError) as e:
            # Offline hub ids fail with OSError; malformed ids with a ValueError from huggingface_hub.
            why = first_line(e) + (" (offline: read from the local cache only)" if cache_only else "")
            raise XPasteError(f"could not load CLIPSeg model {model!r}: {why}",
                              hint=f"{_HINT}; or download it once while online") from None
        # Cast after loading: the from_pretrained dtype keyword changed name across transformers versions.
        return processor, net.to(self.device, self.dtype).eval()

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        check_batch(images, prompts)
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            texts = [self.prompt_for(p) for p in prompts[start : start + self.batch_size]]
            inputs = self.processor(text=texts, images=batch, padding=True, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            logits = self.model(**inputs).logits
            if logits.ndim == 2:  # older transformers squeeze a batch of one to (S, S)
                logits = logits[None]
            probs = torch.sigmoid(logits.float()).cpu().numpy()
            for prob, img in zip(probs, batch):
                h, w = img.shape[:2]
                out.append(normalize_soft(cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)))
        return out

    def prompt_for(self, name: str) -> str:
        """The CLIPSeg text for a category name; LVIS underscores ("baseball_bat") become spaces."""
        return self.prompt_template.format(name=name.replace("_", " "))

"""CLIP scoring of cut-outs with open_clip (X-Paste uses ViT-L/14 from OpenAI).

Model specs: a built-in open_clip name with a pretrained tag ("ViT-L-14", "openai"), an
`hf-hub:org/name` repo, or `local-dir:/folder` holding open_clip_config.json and weights
(open_clip_model.safetensors). A bare existing folder is treated as `local-dir:`.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import numpy as np
import open_clip
import torch
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.hub import LOCAL_HINTS, check_download, check_hub_model, first_line, hub_offline
from xpaste.score import composite_on_white, prompt_for

__all__ = ["ClipScorer", "composite_on_white"]

_SCHEMAS = ("hf-hub:", "local-dir:")
_HINT = f"{LOCAL_HINTS['clip']}; or download it once while online (it is then read from the cache)"


def _weight_files(filename: str) -> list[str]:
    """open_clip's file for a hub repo and the .safetensors twin it prefers (open_clip.pretrained)."""
    if filename == "open_clip_pytorch_model.bin":
        return ["open_clip_model.safetensors", filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def check_model(model: str, pretrained: str | None = "openai", cache_dir: str | None = None) -> bool:
    """In seconds, before open_clip downloads anything: True when the weights must come from the cache (the
    hub is unreachable but they are there), False when they can load normally (a folder, random weights, or
    the host answers). Raises XPasteError in one line when they cannot be had (xpaste.hub)."""
    if not model.startswith(_SCHEMAS) and os.path.isdir(os.path.expanduser(model)):
        return False  # a bare folder: ClipScorer reads it as local-dir:
    if model.startswith(_SCHEMAS):
        pretrained = None
    label = model if pretrained is None else f"{model} ({pretrained})"
    if model.startswith("local-dir:"):
        return False
    if model.startswith("hf-hub:"):
        return check_hub_model(model.removeprefix("hf-hub:"), what="CLIP model", files=["open_clip_config.json"],
                               hint=LOCAL_HINTS["clip"], cache_dir=cache_dir, shown=label)
    if not pretrained or os.path.isfile(os.path.expanduser(pretrained)):
        return False  # random weights or a checkpoint file: nothing to download
    cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained)
    if not cfg or cfg.get("file"):
        return False  # an unknown tag is open_clip's own one-line error
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/name/" (default file) or "org/name/file.pt"
        files = _weight_files(filename or "open_clip_pytorch_model.bin")
        return check_hub_model(repo, what="CLIP model", files=files, hint=LOCAL_HINTS["clip"], cache_dir=cache_dir,
                               shown=label)
    if cfg.get("url"):
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(cfg["url"]))
        if not os.path.isfile(target):
            check_download(cfg["url"], target, what="CLIP model", model=label, hint=_HINT)
    return False


class _OpenClipErrorLog(logging.Filter):
    """open_clip logs a failure with `logging.error` on the root logger before raising it: with no handler
    configured that prints a stray `ERROR:root:` line (and configures logging for the whole process). Kept
    out of the output; the raised exception carries the same text."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}open_clip{os.sep}" in record.pathname)


@contextmanager
def _quiet_open_clip():
    root = logging.getLogger()
    flt, guard = _OpenClipErrorLog(), logging.NullHandler()
    root.addFilter(flt)
    root.addHandler(guard)  # a handler on root: logging.error() does not call basicConfig()
    try:
        yield
    finally:
        root.removeHandler(guard)
        root.removeFilter(flt)


class ClipScorer:
    """Image/text embeddings (L2-normalised float32) and the paper's score 100 x cosine.

    Images go through the model's own open_clip preprocessing (`self.preprocess`), never cropped here.

    device: None picks CUDA when available; fp16 weights are used on CUDA (fp16=None).
    batch_size: images (and texts) per forward pass.
    """

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = "openai", device: str | None = None,
                 batch_size: int = 32, fp16: bool | None = None, cache_dir: str | None = None):
        if not model.startswith(_SCHEMAS) and os.path.isdir(os.path.expanduser(model)):
            model = "local-dir:" + os.path.expanduser(model)
        if model.startswith(_SCHEMAS):
            pretrained = None  # open_clip ignores (and warns about) a tag next to a schema
        self.model_name, self.pretrained = model, pretrained
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        use_fp16 = (self.device.type == "cuda") if fp16 is None else fp16
        self.batch_size = int(batch_size)
        label = model if pretrained is None else f"{model} ({pretrained})"
        cache_only = check_model(model, pretrained, cache_dir)
        try:
            with hub_offline(cache_only), _quiet_open_clip():
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    model, pretrained=pretrained, device=self.device, precision="fp16" if use_fp16 else "fp32",
                    cache_dir=cache_dir)
                self.tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
        except (RuntimeError, OSError, ValueError) as e:
            # Offline: built-in tags and hf-hub fail with RuntimeError, missing folders with OSError.
            why = first_line(e) + (" (offline: read from the local cache only)" if cache_only else "")
            raise XPasteError(f"could not load CLIP model {label}: {why}", hint=_HINT) from None
        self.model.eval()
        self.dtype = next(self.model.parameters()).dtype
        self.name = f"clip:{label}"

    @torch.inference_mode()
    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of (H, W, 3) uint8 RGB images."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(Image.fromarray(np.asarray(img, np.uint8)))
                                 for img in images[start : start + self.batch_size]])
            feats = self.model.encode_image(batch.to(self.device, self.dtype))
            chunks.append(feats.float().cpu().numpy())
        return _normalise(chunks, self._dim())

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(M, D) float32 L2-normalised text embeddings."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            chunks.append(self.model.encode_text(tokens).float().cpu().numpy())
        return _normalise(chunks, self._dim())

    def score(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """(N,) float32 scores 100 x cosine(image_i, text_i); repeated texts are embedded once."""
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} texts (one text per image)")
        if not images:
            return np.zeros(0, np.float32)
        unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        img = self.embed_images(images)
        txt = self.embed_texts(list(unique))[inverse.ravel()]
        return (100.0 * np.sum(img * txt, axis=1)).astype(np.float32)

    def score_cutouts(self, images: list[np.ndarray], soft_masks: list[np.ndarray],
                      names: list[str]) -> np.ndarray:
        """X-Paste's cut-out score (method.md, Stage 2): (N,) float32 100 x cosine between each whole (H, W, 3)
        uint8 image shown white outside its binary mask (> 128; `composite_on_white`), through open_clip's
        preprocessing (bicubic resize of the short side to the model's size, 224 for ViT-L/14, and a centre
        crop), and `a photo of {name}` (LVIS underscores as spaces)."""
        composites = [composite_on_white(img, m) for img, m in zip(images, soft_masks, strict=True)]
        return self.score(composites, [prompt_for(n) for n in names])

    def _dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        return int(getattr(getattr(self.model, "visual", None), "output_dim", 0))


def _normalise(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    x = np.concatenate(chunks).astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)

"""CLIP scoring of cut-outs with open_clip (X-Paste uses ViT-L/14 from OpenAI).

Model specs: a built-in open_clip name with a pretrained tag ("ViT-L-14", "openai"), an
`hf-hub:org/name` repo, or `local-dir:/folder` holding open_clip_config.json and weights
(open_clip_model.safetensors). A bare existing folder is treated as `local-dir:`.
"""
from __future__ import annotations

import os

import numpy as np
import open_clip
import torch
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.score import composite_on_white, prompt_for

__all__ = ["ClipScorer", "composite_on_white"]

_SCHEMAS = ("hf-hub:", "local-dir:")


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
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained, device=self.device, precision="fp16" if use_fp16 else "fp32",
                cache_dir=cache_dir)
            self.tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
        except (RuntimeError, OSError, ValueError) as e:
            # Offline: built-in tags and hf-hub fail with RuntimeError, missing folders with OSError.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise XPasteError(
                f"could not load CLIP model {label}: {first}",
                hint="download it once while online (cached under HF_HOME), or pass a folder with "
                     "open_clip_config.json and open_clip_model.safetensors as local-dir:/path/to/folder") from e
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

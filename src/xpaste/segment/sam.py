"""SAM and SAM 2 (transformers `SamModel` / `Sam2Model`) prompted as DiverGen's SAM-bg: background points at
the image corners, the background mask inverted.

Prompt rule (`prompt="bg"`, the default). DiverGen (Fan et al., CVPR 2024, arXiv:2405.10185, Sec. 3.3
"instance annotation", SAM-background) annotates its generated object-centric images by prompting SAM with
points on the *background* and taking the complement of the returned background mask as the object
(`../shared/method.md`, Stage 2: "DiverGen segments with SAM prompted by background points (SAM-bg)").
Here the points are the four corner pixels, each labelled positive for the segment being asked for (the
background); of SAM's three candidate masks the one with the highest predicted IoU (`iou_scores`, SAM's own
quality estimate) is kept, and the foreground is `1 - sigmoid(logit)`. Generated images show one object on a
plain backdrop that touches all four corners, which is what makes the corners a safe background prompt.

`prompt="box"` is the other prompt the issue names: one box covering the whole image, the returned mask taken
as the object as is (no inversion).

Box prompts (`segment_boxes`, the optional `xpaste.segment.base.BoxSegmenter` protocol; `xpaste
masks-from-boxes`): each given box prompts SAM alone, with SAM's single-mask output (`multimask_output=False`,
the output SAM's authors use for an unambiguous prompt such as a box), binarised at logit > 0 at the image's
size (transformers' `post_process_masks` default, SAM's own threshold): no min-max stretch, so a box where SAM
finds nothing gives an empty mask. The image is encoded once; its boxes go through the prompt encoder and mask
decoder `box_batch` at a time.

Either way the soft mask is the probability at the image's own size (transformers' `post_process_masks`
with `binarize=False`: padding removed, bilinear upscaling), then min-max normalised per image to 0-255
(`normalize_soft`, method.md Stage 2), like every other segmenter.

Models: a hub id or a local folder holding the model and its processor (`save_pretrained` of each into
the same folder). Defaults: `facebook/sam-vit-huge` (SAM) and `facebook/sam2.1-hiera-large` (SAM 2).
"""
from __future__ import annotations

import numpy as np
import torch

from xpaste.errors import XPasteError

try:
    from transformers import Sam2Model, Sam2Processor, SamModel, SamProcessor
except ImportError as e:  # an older transformers without SAM 2 (ModuleNotFoundError is load_backend's)
    if isinstance(e, ModuleNotFoundError):
        raise
    raise XPasteError(f"this transformers has no SAM 2: {e}",
                      hint="pip install -U transformers (xpaste is tested with transformers 5.24)") from None

from xpaste.ops.masks import normalize_soft
from xpaste.segment._hf import load_pair, pick_device, short_name
from xpaste.segment.base import check_batch, check_boxes

PROMPTS = ("bg", "box")


def corner_points(height: int, width: int) -> list[list[float]]:
    """The four corner pixels as (x, y) points, the SAM-bg background prompt."""
    x1, y1 = float(width - 1), float(height - 1)
    return [[0.0, 0.0], [x1, 0.0], [0.0, y1], [x1, y1]]


class _SamBase:
    """Shared by SAM and SAM 2: prompts, batching, mask selection, soft-mask output."""

    _prefix = ""
    _what = ""
    _default = ""
    _model_cls = None
    _processor_cls = None

    def __init__(self, model: str | None = None, device: str | None = None, batch_size: int = 4,
                 fp16: bool = False, name: str | None = None, prompt: str = "bg", box_batch: int = 64):
        model = model or self._default
        if prompt not in PROMPTS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPTS)}, got {prompt!r}")
        self.model_id = model
        self.prompt = prompt
        self.device = pick_device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.batch_size = max(1, int(batch_size))
        self.box_batch = max(1, int(box_batch))
        self.name = name or short_name(self._prefix, model, self._default)
        hint = (f"pass a local folder holding the {self._what} and its processor: "
                f"--segmenter {self._prefix}:/path/to/folder (config: segment.segmenters)")
        self.processor, net = load_pair(model, self._model_cls, self._processor_cls, what=self._what, hint=hint)
        self.model = net.to(self.device, self.dtype).eval()

    def _prompt_kwargs(self, batch: list[np.ndarray]) -> dict:
        if self.prompt == "box":
            return {"input_boxes": [[[0.0, 0.0, float(img.shape[1]), float(img.shape[0])]] for img in batch]}
        return {"input_points": [[corner_points(*img.shape[:2])] for img in batch],
                "input_labels": [[[1, 1, 1, 1]] for _ in batch]}

    def _upscale(self, logits: torch.Tensor, inputs, binarize: bool = False) -> list[torch.Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def segment_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray],
                      prompts: list[list[str]] | None = None) -> list[np.ndarray]:
        """Binary masks for XYXY pixel boxes, (N, H, W) bool per image (module docstring: box prompts); the
        category names are accepted and ignored."""
        boxes = check_boxes(images, boxes, prompts)
        out: list[np.ndarray] = []
        for img, box in zip(images, boxes):
            masks = np.zeros((len(box), *img.shape[:2]), bool)
            if len(box):
                inputs = self.processor(images=[img], input_boxes=[box.tolist()], return_tensors="pt")
                embeddings = self.model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
                for start in range(0, len(box), self.box_batch):
                    chunk = inputs["input_boxes"][:, start : start + self.box_batch].to(self.device, self.dtype)
                    outputs = self.model(image_embeddings=embeddings, input_boxes=chunk, multimask_output=False)
                    # pred_masks: (1 image, boxes, 1 mask, h, w) logits -> (boxes, 1, H, W) bool, logit > 0
                    up = self._upscale(outputs.pred_masks.float().cpu(), inputs, binarize=True)[0]
                    masks[start : start + chunk.shape[1]] = up[:, 0].numpy().astype(bool)
            out.append(masks)
        return out

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray], prompts: list[str] | None = None) -> list[np.ndarray]:
        # Point/box prompts come from the image itself; category names are accepted and ignored.
        check_batch(images, prompts)
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            inputs = self.processor(images=batch, return_tensors="pt", **self._prompt_kwargs(batch))
            model_inputs = {k: v.to(self.device) for k, v in inputs.items()
                            if k in ("pixel_values", "input_points", "input_labels", "input_boxes")}
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
            outputs = self.model(**model_inputs, multimask_output=True)
            # pred_masks: (batch, 1 prompt, 3 candidates, h, w) logits; iou_scores: (batch, 1, 3)
            best = outputs.iou_scores[:, 0].float().argmax(-1)
            rows = torch.arange(len(batch), device=best.device)
            logits = outputs.pred_masks[rows, 0, best].float().cpu()[:, None, None]  # (batch, 1, 1, h, w)
            for logit, img in zip(self._upscale(logits, inputs), batch):
                prob = torch.sigmoid(logit.reshape(img.shape[:2]).double()).numpy()
                out.append(normalize_soft(1.0 - prob if self.prompt == "bg" else prob))
        return out


class SamSegmenter(_SamBase):
    """SAM (transformers `SamModel` + `SamProcessor`) prompted as DiverGen's SAM-bg (module docstring).

    model: a hub id (default facebook/sam-vit-huge) or a folder holding the model and its processor.
    device: "cuda"/"cpu"/...; None picks CUDA when available. fp16: half precision (off by default).
    batch_size: images per forward pass. prompt: "bg" (corner points, inverted; default) or "box".
    box_batch: boxes per mask-decoder pass of `segment_boxes`.
    """

    _prefix = "sam"
    _what = "SAM model"
    _default = "facebook/sam-vit-huge"
    _model_cls = SamModel
    _processor_cls = SamProcessor

    def _upscale(self, logits, inputs, binarize: bool = False):
        return self.processor.post_process_masks(logits, inputs["original_sizes"], inputs["reshaped_input_sizes"],
                                                 binarize=binarize)


class Sam2Segmenter(_SamBase):
    """SAM 2 (transformers `Sam2Model` + `Sam2Processor`) prompted as DiverGen's SAM-bg (module docstring).

    model: a hub id (default facebook/sam2.1-hiera-large) or a folder holding the model and its processor.
    Other arguments as `SamSegmenter`.
    """

    _prefix = "sam2"
    _what = "SAM 2 model"
    _default = "facebook/sam2.1-hiera-large"
    _model_cls = Sam2Model
    _processor_cls = Sam2Processor

    def _upscale(self, logits, inputs, binarize: bool = False):
        return self.processor.post_process_masks(logits, inputs["original_sizes"], binarize=binarize)

"""SAM 3 (transformers `Sam3Model` + `Sam3Processor`): text-prompted concept segmentation with the category
name, keeping the highest-scoring instance.

Prompt rule: the bare category name, underscores as spaces ("baseball_bat" -> "baseball bat"), not
`a photo of {name}`. SAM 3's concept prompts are "short noun phrases (e.g., 'yellow school bus')" (SAM 3 paper,
Carion et al. 2025, abstract, quoted by the transformers model page
https://huggingface.co/docs/transformers/model_doc/sam3), and every text-prompt example on that page passes a
bare noun phrase (`text="ear"`, `["ear", "dial"]`, `"laptop"`, `"handle"`). `a photo of {name}` is CLIP's and
CLIPSeg's template (X-Paste's CLIPSeg prompt, method.md Stage 2), not SAM 3's. `prompt_template` overrides it.

Instance choice: SAM 3 returns up to N query instances per image; each is scored as transformers'
`post_process_instance_segmentation` scores it, `sigmoid(pred_logits) * sigmoid(presence_logits)`, and the
single highest-scoring one is kept, whatever its score (no threshold: the ensemble's CLIP scoring judges the
cut-out, method.md Stage 2). Its mask probability (`sigmoid(pred_masks)`) is resized bilinearly to the image
size (as `post_process_instance_segmentation` does, before its binarisation) and min-max normalised per image
to 0-255 (`normalize_soft`).

Box prompts (`segment_boxes`, the optional `xpaste.segment.base.BoxSegmenter` protocol; `xpaste
masks-from-boxes`): SAM 3 takes the box as a positive visual exemplar (`input_boxes`, label 1) together with the
category name as the concept; of its query instances the one kept is the one that best matches the box, the
highest `score x IoU(predicted box, prompt box)` (score as above), and its mask probability, resized
bilinearly to the image size, is binarised at > 0.5 (`post_process_instance_segmentation`'s mask threshold):
no min-max stretch, so a box where SAM 3 finds nothing gives an empty mask. The image is encoded once
(`get_vision_features`), then one pass per box (several exemplars in one pass would be one concept).

Model: a hub id (default `facebook/sam3`, a gated repo: accept its licence on the hub, then download once) or
a local folder holding the model, its processor and the CLIP tokenizer (`save_pretrained` of each into it).
"""
from __future__ import annotations

import numpy as np
import torch

from xpaste.errors import XPasteError

try:
    from transformers import Sam3Model, Sam3Processor
except ImportError as e:  # an older transformers without SAM 3 (ModuleNotFoundError is load_backend's)
    if isinstance(e, ModuleNotFoundError):
        raise
    raise XPasteError(f"this transformers has no SAM 3: {e}",
                      hint="pip install -U transformers (xpaste is tested with transformers 5.24)") from None

from xpaste.ops.masks import normalize_soft
from xpaste.segment._hf import load_pair, pick_device, short_name
from xpaste.segment.base import check_batch, check_boxes

DEFAULT_MODEL = "facebook/sam3"
#: SAM 3's concept prompt is a short noun phrase: the category name itself (module docstring).
PROMPT_TEMPLATE = "{name}"


class Sam3Segmenter:
    """Soft mask of SAM 3's highest-scoring instance for the category name (module docstring).

    segment(images, prompts): prompts are category names, one per image (required).
    model: a hub id (default facebook/sam3) or a local folder. device: None picks CUDA when available.
    fp16: half precision (off by default). batch_size: images per forward pass.
    """

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, batch_size: int = 4,
                 fp16: bool = False, name: str | None = None, prompt_template: str = PROMPT_TEMPLATE):
        self.model_id = model
        self.prompt_template = prompt_template
        self.device = pick_device(device)
        self.dtype = torch.float16 if fp16 else torch.float32
        self.batch_size = max(1, int(batch_size))
        self.name = name or short_name("sam3", model, DEFAULT_MODEL)
        hint = ("pass a local folder holding the SAM 3 model, its processor and tokenizer: "
                "--segmenter sam3:/path/to/folder (config: segment.segmenters)")
        self.processor, net = load_pair(model, Sam3Model, Sam3Processor, what="SAM 3 model", hint=hint)
        self.model = net.to(self.device, self.dtype).eval()

    def prompt_for(self, name: str) -> str:
        """The SAM 3 text for a category name; LVIS underscores ("baseball_bat") become spaces."""
        return self.prompt_template.format(name=name.replace("_", " ").strip())

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray], prompts: list[str]) -> list[np.ndarray]:
        if prompts is None:
            raise ValueError("SAM 3 is text-prompted: pass one category name per image")
        check_batch(images, prompts)
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            texts = [self.prompt_for(p) for p in prompts[start : start + self.batch_size]]
            inputs = self.processor(images=batch, text=texts, return_tensors="pt")
            model_inputs = {k: v.to(self.device) for k, v in inputs.items()
                            if k in ("pixel_values", "input_ids", "attention_mask")}
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.dtype)
            outputs = self.model(**model_inputs)
            scores = outputs.pred_logits.float().sigmoid()  # (batch, queries)
            if outputs.presence_logits is not None:
                scores = scores * outputs.presence_logits.float().sigmoid()  # (batch, 1): broadcast
            best = scores.argmax(-1)
            rows = torch.arange(len(batch), device=best.device)
            probs = outputs.pred_masks[rows, best].float().sigmoid()  # (batch, h, w)
            for prob, img in zip(probs, batch):
                h, w = img.shape[:2]
                up = torch.nn.functional.interpolate(prob[None, None], size=(h, w), mode="bilinear",
                                                     align_corners=False)
                out.append(normalize_soft(up[0, 0].double().cpu().numpy()))
        return out

    @torch.inference_mode()
    def segment_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray],
                      prompts: list[list[str]] | None = None) -> list[np.ndarray]:
        """Binary masks for XYXY pixel boxes, (N, H, W) bool per image (module docstring: box prompts).
        prompts: the category name of each box (required: SAM 3's concept)."""
        if prompts is None:
            raise ValueError("SAM 3 is text-prompted: pass one category name per box")
        boxes = check_boxes(images, boxes, prompts)
        out: list[np.ndarray] = []
        for img, box, names in zip(images, boxes, prompts):
            h, w = img.shape[:2]
            masks = np.zeros((len(box), h, w), bool)
            if len(box):
                pixels = self.processor(images=[img], return_tensors="pt")["pixel_values"]
                vision = self.model.get_vision_features(pixels.to(self.device, self.dtype))
                scale = torch.tensor([w, h, w, h], dtype=torch.float64)
                for i, (b, name) in enumerate(zip(box, names)):
                    inputs = self.processor(original_sizes=[[h, w]], text=[self.prompt_for(name)],
                                            input_boxes=[[b.tolist()]], input_boxes_labels=[[1]],
                                            return_tensors="pt")
                    outputs = self.model(vision_embeds=vision, input_ids=inputs["input_ids"].to(self.device),
                                         attention_mask=inputs["attention_mask"].to(self.device),
                                         input_boxes=inputs["input_boxes"].to(self.device, self.dtype),
                                         input_boxes_labels=inputs["input_boxes_labels"].to(self.device))
                    scores = outputs.pred_logits[0].float().sigmoid()  # (queries,)
                    if outputs.presence_logits is not None:
                        scores = scores * outputs.presence_logits[0].float().sigmoid()
                    q = int((scores.cpu().double() * box_iou(outputs.pred_boxes[0].cpu().double() * scale,
                                                             torch.as_tensor(b, dtype=torch.float64))).argmax())
                    prob = outputs.pred_masks[0, q].float().sigmoid()
                    up = torch.nn.functional.interpolate(prob[None, None], size=(h, w), mode="bilinear",
                                                         align_corners=False)
                    masks[i] = (up[0, 0] > 0.5).cpu().numpy()
            out.append(masks)
        return out


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of each XYXY box in (Q, 4) `boxes` with the XYXY `box` (4,); 0 where either has no area."""
    x1 = torch.maximum(boxes[:, 0], box[0])
    y1 = torch.maximum(boxes[:, 1], box[1])
    x2 = torch.minimum(boxes[:, 2], box[2])
    y2 = torch.minimum(boxes[:, 3], box[3])
    inter = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    union = area + (box[2] - box[0]).clamp(min=0) * (box[3] - box[1]).clamp(min=0) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))

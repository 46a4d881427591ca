"""Reference training: torchvision Mask R-CNN R50-FPN on a COCO/LVIS dataset, with or without an xpaste pool.

What it is: a small, reproducible A/B harness. Run it twice with the same seed and schedule, once with
`--pool`, then compare with `xpaste eval --compare` (examples/README.md, docs/training.md). The data order
and the jitter of every sample are drawn from `--seed` alone, so the two runs see the same images, crops
and flips and differ only by the pasted objects. Runs on CPU for a smoke test and on CUDA unchanged (`--amp`
for mixed precision on CUDA).

The paste follows X-Paste (method.md, Stage 4): large-scale jitter (resize by U(0.1, 2.0) of the canvas,
random crop of at most `--min-size` square), horizontal flip, then the paste ON THE UNPADDED CROP (the
canvas is image content, never padding), sized by the per-category scale prior measured on the training
json's original annotations, and only then padding (bottom/right) to the square canvas. Repeat-factor
sampling (LVIS, t = 0.001) counts original annotations only: pasted ones (`"pasted": true` in an `xpaste
augment` output) would make every category frequent.

How it differs from the paper's recipe (CenterNet2 R50 / Swin-L, federated loss, AdamW lr 1e-4 with
warm-up cosine, 180k iterations at batch 64, EMA, fp16, LSJ at 640 for R50 and 896 for Swin-L): the
detector is torchvision's Mask R-CNN R50-FPN (no CenterNet2, no federated loss, no EMA), trained with SGD
(lr 0.02 x batch / 16, momentum 0.9, linear warm-up, steps at 2/3 and 8/9 of the run). Its numbers are
therefore comparable between its own baseline and X-Paste runs, not with the paper's table. Use the paper's
canvas: `--min-size 640` (R50, the default); 896 is the paper's Swin-L canvas.
"""
from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.data
from torchvision import tv_tensors
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from xpaste.data.coco import load_coco, load_sample, read_image_rgb
from xpaste.io import resolve_inside, write_json_atomic
from xpaste.ops.masks import rle_encode


# ----------------------------------------------------------------------------- repeat-factor sampling
def repeat_factors(image_categories: list[set[int]], threshold: float) -> np.ndarray:
    """LVIS repeat factors: r_i = max over categories c in image i of max(1, sqrt(t / f_c)).

    f_c is the fraction of images that contain category c; images without annotations get r = 1.
    """
    n = len(image_categories)
    counts: dict[int, int] = {}
    for cats in image_categories:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    r_cat = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in counts.items()}
    return np.array([max((r_cat[c] for c in cats), default=1.0) for cats in image_categories], np.float64)


class RepeatFactorSampler(torch.utils.data.Sampler):
    """An endless, seeded stream of (image index, sample seed) pairs, epoch after epoch.

    Each epoch repeats image i floor(r_i) times plus once more with probability frac(r_i) (stochastic
    rounding, as detectron2's RepeatFactorTrainingSampler), shuffles, and pairs every position with a seed
    for that sample's own augmentation randomness. Everything comes from one generator seeded by `seed`,
    so the stream does not depend on the model, on the pool, or on the number of DataLoader workers.
    """

    def __init__(self, factors: np.ndarray, seed: int) -> None:
        self.factors = torch.as_tensor(np.asarray(factors, np.float64))
        self.seed = int(seed)

    def epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        whole = torch.floor(self.factors)
        extra = torch.rand(len(self.factors), generator=generator, dtype=torch.float64) < self.factors - whole
        reps = (whole + extra).long()
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), reps)
        return indices[torch.randperm(len(indices), generator=generator)]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            indices = self.epoch_indices(g)
            seeds = torch.randint(0, 2**62, (len(indices),), generator=g)
            yield from zip(indices.tolist(), seeds.tolist())


# ----------------------------------------------------------------------------- data
class CocoInstances(torch.utils.data.Dataset):
    """(image, target) samples for Mask R-CNN from a COCO/LVIS json via xpaste's own reader.

    The v2 pipeline sees labels as dataset category ids (what the pool holds too); they become the model's
    contiguous labels 1..K only at the end. Crowd regions are dropped: Mask R-CNN has no ignore regions.
    """

    def __init__(self, dataset_json: Path, images_dir: Path, transform, cat_ids: list[int]) -> None:
        self.coco = load_coco(dataset_json)
        self.images_dir = images_dir
        self.ids = [int(img["id"]) for img in self.coco.images]
        self.transform = transform
        self.lookup = torch.zeros(max(cat_ids) + 1, dtype=torch.int64)
        self.lookup[torch.tensor(cat_ids)] = torch.arange(1, len(cat_ids) + 1)

    def __len__(self) -> int:
        return len(self.ids)

    def categories_per_image(self) -> list[set[int]]:
        """Categories of each image's original annotations: crowd regions and pasted objects (an `xpaste
        augment` output marks them `"pasted": true`) are not the training set's statistics (method.md)."""
        return [{int(a["category_id"]) for a in self.coco.annotations_for(i)
                 if not a.get("iscrowd", 0) and not a.get("pasted", False)} for i in self.ids]

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = load_sample(self.coco, self.ids[index], self.images_dir)
        t = sample.targets
        keep = ~t.extra["iscrowd"]
        h, w = sample.height, sample.width
        image = tv_tensors.Image(torch.from_numpy(sample.image).permute(2, 0, 1).contiguous())
        target = {"image_id": self.ids[index],
                  "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(t.boxes[keep]), format="XYXY", canvas_size=(h, w)),
                  "masks": tv_tensors.Mask(torch.from_numpy(t.masks[keep].astype(np.uint8))),
                  "labels": torch.from_numpy(t.labels[keep])}
        if seed is None:
            image, target = self.transform(image, target)
        else:  # this sample's jitter depends on its seed only (not on worker, model or pool randomness)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image, target = self.transform(image, target)
        target["labels"] = self.lookup[target["labels"]]
        target["num_pasted"] = int(target.pop("pasted").sum()) if "pasted" in target else 0  # for the log
        return image, target


class RandomCropUpTo(v2.Transform):
    """Crop a random `size` x `size` window; a side shorter than `size` is kept whole (no padding)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        ch, cw = min(h, self.size), min(w, self.size)
        top = int(torch.randint(0, h - ch + 1, ()))
        left = int(torch.randint(0, w - cw + 1, ()))
        return {"top": top, "left": left, "height": ch, "width": cw}

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.crop, inpt, **params)


class PadTo(v2.Transform):
    """Pad bottom/right with zeros to `size` x `size` (as detectron2's LSJ pads); boxes do not move."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = int(size)

    def make_params(self, flat_inputs: list) -> dict:
        h, w = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size - w, 0), max(self.size - h, 0)]}

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


def build_transform(canvas: int, lsj: tuple[float, float], pool_path: Path | None, seed: int, max_paste: int,
                    scale_prior=None):
    """Large-scale jitter, crop (unpadded), flip, [paste], pad to the canvas, float.

    The paste sees the unpadded crop, so pasted objects land on image content and are sized relative to
    it; `scale_prior` (the training json, `xpaste stats` output or a mapping) sizes them as X-Paste does.
    """
    from xpaste.integrations.torchvision import XPasteCopyPaste, sanitize_labels_getter

    steps = [v2.ScaleJitter((canvas, canvas), scale_range=lsj, antialias=True), RandomCropUpTo(canvas),
             v2.RandomHorizontalFlip(), v2.SanitizeBoundingBoxes(min_size=1)]
    if pool_path is not None:
        from xpaste.pool.store import InstancePool

        steps += [XPasteCopyPaste(InstancePool.open(pool_path), scale_prior=scale_prior, max_paste=max_paste,
                                  seed=seed),
                  v2.SanitizeBoundingBoxes(min_size=1, labels_getter=sanitize_labels_getter)]
    return v2.Compose(steps + [PadTo(canvas), v2.ToDtype(torch.float32, scale=True)])


def collate(batch):
    return tuple(zip(*batch))


# ----------------------------------------------------------------------------- model
def build_model(num_classes: int, args) -> torch.nn.Module:
    sizes = dict(min_size=args.min_size, max_size=args.max_size, box_detections_per_img=args.detections_per_img,
                 box_score_thresh=args.score_thresh, box_batch_size_per_image=args.roi_batch,
                 rpn_batch_size_per_image=args.rpn_batch, rpn_pre_nms_top_n_test=args.test_proposals,
                 rpn_post_nms_top_n_test=args.test_proposals)
    if args.backbone_weights is None:  # from scratch: every layer trains, plain BatchNorm
        return maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=num_classes, **sizes)
    # ImageNet weights from a local file (no download): frozen BN and 3 trainable stages, as torchvision does.
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    state = torch.load(args.backbone_weights, map_location="cpu", weights_only=True)
    missing, _ = backbone.body.load_state_dict(state, strict=False)
    if missing:
        raise SystemExit(f"{args.backbone_weights}: not a ResNet-50 checkpoint (missing {missing[:3]} ...)")
    return MaskRCNN(backbone, num_classes=num_classes, **sizes)


def lr_at(it: int, args) -> float:
    warmup = min(args.warmup_iters, max(args.iters // 10, 1))
    factor = 0.1 ** sum(it >= round(args.iters * s) for s in (2 / 3, 8 / 9))
    return args.lr * factor * (min(1.0, (it + 1) / warmup) if it < warmup else 1.0)


# ----------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model, dataset_json: Path, images_dir: Path, cat_ids: list[int], device: torch.device) -> list[dict]:
    """COCO results (RLE masks thresholded at 0.5, XYWH boxes) for every image of a dataset."""
    model.eval()
    coco = load_coco(dataset_json)
    results = []
    for info in coco.images:
        rgb = read_image_rgb(resolve_inside(images_dir, info["file_name"], "file_name"))
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(device)
        out = model([image])[0]
        masks = (out["masks"][:, 0] >= 0.5).cpu().numpy()
        # Full-image RLEs: torchvision pastes each mask into a box enlarged by a margin, so its pixels may
        # spill past the predicted box (masks_to_rles assumes they do not).
        for box, label, score, mask in zip(out["boxes"].tolist(), out["labels"].tolist(), out["scores"].tolist(),
                                           masks):
            x1, y1, x2, y2 = box
            results.append({"image_id": int(info["id"]), "category_id": cat_ids[label - 1], "score": float(score),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "segmentation": rle_encode(mask)})
    return results


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="training COCO/LVIS json")
    p.add_argument("--images", type=Path, required=True, help="folder the json's file_name entries are under")
    p.add_argument("--pool", type=Path, default=None, help="xpaste instance pool; omit for the baseline")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lr", type=float, default=None, help="default 0.02 x batch-size / 16 (linear scaling)")
    p.add_argument("--warmup-iters", type=int, default=1000)
    p.add_argument("--rfs-threshold", type=float, default=0.001, help="repeat-factor t; 0 disables")
    p.add_argument("--min-size", type=int, default=640,
                   help="training canvas (square) and test shorter side; the paper: 640 (R50), 896 (Swin-L)")
    p.add_argument("--max-size", type=int, default=1024, help="test longer side cap")
    p.add_argument("--lsj", type=float, nargs=2, default=(0.1, 2.0), help="large-scale jitter scale range")
    p.add_argument("--max-paste", type=int, default=20, help="pasted objects per image ~ U[0, max)")
    p.add_argument("--backbone-weights", type=Path, default=None, help="local ImageNet ResNet-50 .pth")
    p.add_argument("--val-dataset", type=Path, default=None, help="evaluate here (default: --dataset)")
    p.add_argument("--val-images", type=Path, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--score-thresh", type=float, default=1e-4)
    p.add_argument("--detections-per-img", type=int, default=300, help="LVIS evaluates 300 per image")
    p.add_argument("--roi-batch", type=int, default=512, help="sampled RoIs per image (box head)")
    p.add_argument("--rpn-batch", type=int, default=256, help="sampled anchors per image (RPN)")
    p.add_argument("--test-proposals", type=int, default=1000, help="RPN proposals per image at test time")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.lr is None:
        args.lr = 0.02 * args.batch_size / 16
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)  # model initialisation: identical with and without a pool
    cat_ids = sorted(int(c["id"]) for c in load_coco(args.dataset).categories)
    # X-Paste's scale prior: measured on the training json's original annotations (crowd and pasted left out).
    transform = build_transform(args.min_size, tuple(args.lsj), args.pool, args.seed, args.max_paste,
                                scale_prior=args.dataset)
    dataset = CocoInstances(args.dataset, args.images, transform, cat_ids)
    if args.pool is not None:
        from xpaste.pool.store import InstancePool

        unknown = set(np.unique(InstancePool.open(args.pool).category_ids).tolist()) - set(cat_ids)
        if unknown:
            raise SystemExit(f"{args.pool}: pool categories {sorted(unknown)[:10]} are not in {args.dataset}")
    factors = (repeat_factors(dataset.categories_per_image(), args.rfs_threshold) if args.rfs_threshold > 0
               else np.ones(len(dataset)))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers,
                                         sampler=RepeatFactorSampler(factors, args.seed), collate_fn=collate,
                                         generator=torch.Generator().manual_seed(args.seed),
                                         persistent_workers=args.workers > 0)
    model = build_model(len(cat_ids) + 1, args).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=1e-4)
    use_amp = args.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    log = []
    model.train()
    start = time.time()
    for it, (images, targets) in enumerate(itertools.islice(loader, args.iters)):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, args)
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, enabled=use_amp):
            losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise SystemExit(f"iteration {it}: loss is {float(loss)} ({ {k: float(v) for k, v in losses.items()} })")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        log.append({"iter": it, "lr": lr_at(it, args), "pasted": sum(t["num_pasted"] for t in targets),
                    "loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
        if it % 20 == 0 or it == args.iters - 1:
            print(f"iter {it:6d}  loss {loss.item():.4f}  lr {lr_at(it, args):.5f}  {time.time() - start:.0f}s",
                  flush=True)
        if (it + 1) % args.checkpoint_every == 0:
            torch.save({"model": model.state_dict(), "iter": it + 1, "category_ids": cat_ids}, args.out / "last.pth")
    torch.save({"model": model.state_dict(), "iter": args.iters, "category_ids": cat_ids,
                "args": {k: str(v) for k, v in vars(args).items()}}, args.out / "model_final.pth")
    write_json_atomic(args.out / "train_log.json", log)

    from xpaste.evaluate.metrics import evaluate, format_table

    val_json = args.val_dataset or args.dataset
    results = predict(model, val_json, args.val_images or args.images, cat_ids, device)
    pred_path = args.out / "results.json"
    write_json_atomic(pred_path, results)
    if not results:  # the libraries cannot score an empty list (an untrained model may detect nothing)
        print(f"no detections above --score-thresh {args.score_thresh}: nothing to evaluate")
        return {}
    metrics = {iou: evaluate(val_json, pred_path, iou_type=iou) for iou in ("segm", "bbox")}
    write_json_atomic(args.out / "metrics.json", metrics, indent=1)
    for iou, m in metrics.items():
        print(f"{iou} AP ({m['kind']}, x100):\n" + format_table({args.out.name: m}))
    return metrics


if __name__ == "__main__":
    main()

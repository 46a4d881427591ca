"""Long-tail effect benchmark: does an xpaste pool raise a real detector's rare-category mask AP?

    python benchmarks/effect.py [--seeds 3] [--iters N] [--arms baseline,xpaste,planned] [--quick] [--json FILE]

What it does, end to end, on CPU (2 cores, one torch thread per process):

1. **A long-tailed instance-segmentation task** (seeded, rebuilt identically every run; `task/` under `--out`).
   Eight categories, each a procedural *shape* filled with a *texture* cropped from a photo bundled with
   scikit-image (`skimage.data`): they differ by shape and texture. Every object is tinted with a random
   colour drawn from one distribution shared by all categories, so colour carries no category information.
   Scenes are 128x128 px: a blurred, low-contrast crop of a colour photo (astronaut / coffee / rocket) with
   up to 4 non-overlapping objects whose bounding square is 20-44 px. Frequency groups follow LVIS
   (rare = 1-10 training images, common = 11-100, frequent > 100), set by how many of the 300 training
   images hold the category (one instance per image and category):

   | id | category          | train images | group |
   |----|-------------------|--------------|-------|
   | 1  | brick_disc        | 220          | f     |
   | 2  | grass_square      | 180          | f     |
   | 3  | gravel_triangle   | 150          | f     |
   | 4  | moon_hexagon      | 120          | f     |
   | 5  | coins_cross       | 60           | c     |
   | 6  | text_lshape       | 25           | c     |
   | 7  | camera_star       | 3            | r     |
   | 8  | chelsea_crescent  | 3            | r     |

   The validation set (100 images, 2-4 objects each, categories drawn uniformly) is exhaustively annotated:
   every category absent from an image is in its `neg_category_ids`, so LVIS AP counts false positives
   everywhere. A planning split (60 images, drawn the same way, after the others so train and val are
   unchanged by it) is what the baseline is scored on to write the plan: the plan never sees the validation
   set that the figures come from. All are LVIS-style COCO jsons with compressed-RLE masks
   (pycocotools-valid). The task and the simulated generation live in `effect_task.py`.

2. **The pool, through xpaste's own stages** (`pipeline/` under `--out`). *Simulated stage: generate.* A
   text-to-image model (Stable Diffusion, as X-Paste) would give object-centric images of each category on a
   simple background; no diffusion weights can be downloaded on this machine (offline), and a randomly
   initialised diffusion model would draw noise, so the same procedural renderer draws 24 such images per
   category instead (one object, centred, 90-130 px on a light plain background with a gradient and noise,
   160x160; seeds disjoint from the task's, so no training or validation object is reused). They are
   placed as a labelled collection (`collection/<category>/*.png`) and go through the real stages with
   `xpaste.stages.run.run_pipeline` (what `xpaste run pipeline/config.yaml` runs): `retrieve` with
   `labelled: true`, `segment` with the weightless GrabCut segmenter, no CLIP scoring (`score.clip: null`,
   no weights offline either) and `build-pool` with X-Paste's preset (area fraction in [0.05, 0.95],
   largest component, holes filled). GrabCut's cut-outs are imperfect: that is the honest number.
   Every category gets the same number of images, as X-Paste generates them (the uniform round).

3. **A real detector, trained per seed and arm** with the same seed, schedule and data: torchvision Mask
   R-CNN with a ResNet-18 FPN backbone (`resnet_fpn_backbone('resnet18', weights=None,
   trainable_layers=5)`, random init), `min_size = max_size = 128`, anchors (16, 32, 64, 128, 256) for
   128 px scenes, 64 sampled anchors and 64 sampled RoIs per image, heads sized for the small backbone (a
   512-wide box MLP, four 128-channel mask convs). SGD (lr 0.02, momentum 0.9, weight decay 1e-4,
   100-iteration linear warm-up, lr x0.1 at 2/3 and 8/9 of the run, gradient norm clipped at 10), batch 4,
   700 iterations (`--iters`), horizontal flip. Arm `baseline` pastes nothing; arm `xpaste` puts
   `XPasteCopyPaste(pool, scale_prior=<train json>, max_paste=5, seed=seed)` after the flip (X-Paste's
   balanced sampling, hard blending, scale prior measured on the training json). max_paste = 5 keeps the
   paper's ratio of pasted to original objects: LVIS images hold about 12 objects and U[0, 20) pastes 9.5
   on average; these scenes hold about 2.5 and U[0, 5) pastes 2. The model initialisation, the image
   order and every flip come from the seed alone (each sample's flip from its own seed), so the arms
   differ only by the pasted objects. Repeat-factor sampling is left out: at LVIS' threshold t = 0.001
   every category here (rarest: 3/300 = 0.01 of the images) has a repeat factor of 1, so it would change
   nothing. Each (arm, seed) run is its own process; two run at a time
   (`ProcessPoolExecutor(2)`), each with `torch.set_num_threads(1)`; a finished run is kept (`run.json`
   beside its predictions) and reused by a rerun with the same job, so an interrupted benchmark resumes.

3b. **Arm `planned`: one round of the closed loop**, per seed: that seed's baseline is scored on the
   planning split with the real CLI (`xpaste eval --gt plan.json --pred ... --iou-type segm --out
   metrics.json`), `xpaste plan --metrics metrics.json --dataset train.json --budget B --out plan.json` splits
   the same generation budget as the uniform round (B = 24 x 8 = 192 images, a fresh round: no `--pool`)
   over the categories by the plan's rule (`xpaste.plan`: repeat factor x AP gap; here every repeat factor
   is 1, so the split follows 1 - AP), the simulated generator draws each category's `generate` count of
   images (seeds disjoint from the uniform round's), the same stages make a pool of them, and the detector
   is retrained from the same initialisation with `XPasteCopyPaste(pool, ..., sampling="weighted",
   plan=plan.json)`: each category pasted in proportion to the plan's `paste_weight`.

4. **Evaluation**: predictions on the validation set (up to 50 detections per image, score >= 0.01,
   masks thresholded at 0.5, RLE), scored with `xpaste.evaluate.metrics.evaluate` and printed with
   `format_table(..., delta=True)`, which is exactly what `xpaste eval --gt val.json --pred base.json
   --compare xpaste.json --iou-type segm|bbox` runs (LVIS AP, APr, APc, APf): baseline vs xpaste, and
   xpaste (uniform) vs planned.

5. **Output**: a table per seed and the mean +- standard deviation over seeds, the target check, and with
   `--json FILE` `{"arms": {"baseline"|"xpaste"|"planned": {"segm"|"bbox": [{"seed", "AP", "APr", "APc",
   "APf"}]}}}` (AP x 100) plus the task, the schedule, each seed's plan (generate counts, paste weights) and
   the pools' instance counts.

Schedule and time: 700 iterations at batch 4 per run, 9 runs (3 arms x 3 seeds), 2 at a time (6 with
`--arms baseline,xpaste`). The issue's
feasibility note measured about 1 s per iteration on one free core (1,200 iterations at batch 4): 700
iterations keep 3 rounds of runs plus task, pool and evaluation (about 3 minutes) under 45 minutes. On this
project's machine while other sessions shared it, one run measured 1.6 CPU-seconds per iteration (each run
prints its seconds and CPU-seconds per iteration); at that speed the full run takes about an hour: pass a
smaller `--iters` when the machine is busy, and say so next to the figures.

Targets, fixed before any result was seen (the issue's): mask APr with the pool >= baseline + 5 points (mean
of 3 seeds), and APf not lower than the baseline's by more than the baseline's seed spread (standard
deviation); total run <= 45 minutes on 2 cores; the planned round's mask APr >= the uniform round's + 2 points
(mean of 3 seeds, same generation budget). `--quick` (a 24-image task, 10 iterations at batch 1, 1 seed, every arm) only checks that
the loop runs end to end; its frequency groups are the full task's labels, not measured, and its numbers mean
nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from effect_task import (CATEGORIES, DETECTIONS_PER_IMAGE, N_PLAN, N_TRAIN, N_VAL, POOL_PER_CATEGORY,  # noqa: E402
                         QUICK, SCORE_THRESH, SIZE, build_collection, build_task)


# ----------------------------------------------------------------------------- the pool
def build_pool(work: Path, train_json: Path, counts: int | dict[str, int], round_key: int | None = None,
               progress: bool = False) -> Path:
    """collection (simulated generate) -> xpaste retrieve (labelled) -> segment (GrabCut) -> build-pool, via
    run_pipeline, under `work` (collection/, pipeline/, pool/, pipeline.yaml). Resumes like every stage."""
    import yaml

    from xpaste.stages.config import PipelineConfig
    from xpaste.stages.run import run_pipeline

    collection = work / "collection"
    build_collection(collection, counts, round_key)
    raw = {"run_dir": str(work / "pipeline"), "workers": 1, "device": "cpu",
           "categories": {"source": str(train_json)},
           "generate": {"enabled": False},
           "retrieve": {"enabled": True, "folder": str(collection), "labelled": True},
           "segment": {"segmenters": ["grabcut"]},
           "score": {"clip": None},
           "build_pool": {"preset": "xpaste", "out": str(work / "pool")}}
    (work / "pipeline.yaml").write_text(yaml.safe_dump(raw))  # `xpaste run <this file>` does the same
    report = run_pipeline(PipelineConfig.from_dict(raw), progress=progress)
    return Path(report.parts[-1].out)


def xpaste_cli(*args: str) -> str:
    """Run the real `xpaste` command line (python -m xpaste); its stdout. Raises on a non-zero exit."""
    proc = subprocess.run([sys.executable, "-m", "xpaste", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"xpaste {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def planned_round(out: Path, task: dict, seed: int, baseline_plan_pred: Path, budget: int,
                  progress: bool = False) -> tuple[Path, Path, dict]:
    """One round of the closed loop for `seed`: eval the baseline on the planning split, xpaste plan, the
    simulated generator draws the planned counts, the stages make the pool. (plan path, pool path, plan)."""
    work = out / f"planned-seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    metrics, plan_path = work / "metrics.json", work / "plan.json"
    xpaste_cli("eval", "--gt", str(task["plan"]), "--pred", str(baseline_plan_pred), "--iou-type", "segm",
               "--out", str(metrics))
    xpaste_cli("plan", "--metrics", str(metrics), "--dataset", str(task["train"]), "--budget", str(budget),
               "--out", str(plan_path))
    plan = json.loads(plan_path.read_text())
    counts = {c["name"]: c["generate"] for c in plan["categories"]}
    pool = build_pool(work, task["train"], counts, round_key=seed, progress=progress)
    return plan_path, pool, plan

# ----------------------------------------------------------------------------- training
def _train_samples(train_json: Path, images: Path) -> list[tuple]:
    """(uint8 CHW tensor, XYXY boxes, uint8 masks, labels) per training image, read with xpaste's reader."""
    import torch

    from xpaste.data.coco import load_coco, load_sample

    coco = load_coco(train_json)
    out = []
    for info in coco.images:
        s = load_sample(coco, int(info["id"]), images)
        t = s.targets
        out.append((int(info["id"]), torch.from_numpy(s.image).permute(2, 0, 1).contiguous(),
                    torch.from_numpy(t.boxes), torch.from_numpy(t.masks.astype(np.uint8)),
                    torch.from_numpy(t.labels.astype(np.int64))))
    return out


def build_model(num_classes: int):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)
    anchors = AnchorGenerator(((16,), (32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 5)
    # heads sized for a ResNet-18 on 128 px scenes: half-width box MLP, 128-channel mask convs
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 512)
    return MaskRCNN(backbone, num_classes=None, min_size=SIZE, max_size=SIZE, rpn_anchor_generator=anchors,
                    rpn_batch_size_per_image=64, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
                    rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150, box_batch_size_per_image=64,
                    box_head=box_head, box_predictor=FastRCNNPredictor(512, num_classes),
                    mask_head=MaskRCNNHeads(backbone.out_channels, (128, 128, 128, 128), 1),
                    mask_predictor=MaskRCNNPredictor(128, 128, num_classes),
                    box_detections_per_img=DETECTIONS_PER_IMAGE, box_score_thresh=SCORE_THRESH)



def lr_at(it: int, iters: int, base: float, warmup: int) -> float:
    warmup = min(warmup, max(iters // 10, 1))
    factor = 0.1 ** sum(it >= round(iters * s) for s in (2 / 3, 8 / 9))
    return base * factor * (min(1.0, (it + 1) / warmup) if it < warmup else 1.0)


def train_and_predict(job: dict) -> dict:
    """One (arm, seed) run in its own process: train, predict on val, write results json. Returns timings."""
    import torch

    torch.set_num_threads(1)
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from xpaste.data.coco import load_coco
    from xpaste.imageio import read_rgb as read_image_rgb
    from xpaste.ops.masks import rle_encode

    seed, iters, batch = job["seed"], job["iters"], job["batch"]
    steps = [v2.RandomHorizontalFlip()]
    if job["pool"] is not None:
        from xpaste.integrations.torchvision import XPasteCopyPaste, sanitize_labels_getter
        from xpaste.pool.store import InstancePool

        pool = InstancePool.open(job["pool"])
        sampling = {} if job.get("plan") is None else {"sampling": "weighted", "plan": job["plan"]}
        steps += [XPasteCopyPaste(pool, scale_prior=job["train"], max_paste=job["max_paste"], seed=seed,
                                  **sampling),
                  v2.SanitizeBoundingBoxes(min_size=1, labels_getter=sanitize_labels_getter)]
    transform = v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True)])
    samples = _train_samples(Path(job["train"]), Path(job["images"]))

    torch.manual_seed(seed)  # the model initialisation: identical in both arms
    model = build_model(len(CATEGORIES) + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=job["lr"], momentum=0.9, weight_decay=1e-4)
    # the data stream (order and each sample's own augmentation seed) depends on the seed alone
    g = torch.Generator().manual_seed(seed)

    def stream():
        while True:
            order = torch.randperm(len(samples), generator=g).tolist()
            seeds = torch.randint(0, 2**62, (len(order),), generator=g).tolist()
            yield from zip(order, seeds)

    it_stream = stream()
    model.train()
    start, cpu_start = time.time(), time.process_time()
    pasted_total, log = 0, []
    for it in range(iters):
        images, targets = [], []
        for _ in range(batch):
            idx, sample_seed = next(it_stream)
            image_id, img, boxes, masks, labels = samples[idx]
            target = {"image_id": image_id,
                      "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(SIZE, SIZE)),
                      "masks": tv_tensors.Mask(masks.clone()), "labels": labels.clone()}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed)
                image, target = transform(tv_tensors.Image(img.clone()), target)
            pasted_total += int(target.pop("pasted").sum()) if "pasted" in target else 0
            images.append(image.as_subclass(torch.Tensor))
            targets.append({"boxes": target["boxes"].as_subclass(torch.Tensor),
                            "masks": target["masks"].as_subclass(torch.Tensor),
                            "labels": target["labels"]})
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it, iters, job["lr"], job["warmup"])
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"{job['arm']} seed {seed} iteration {it}: loss {float(loss)}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        log.append(round(loss.item(), 4))
        if job.get("verbose") and (it % 50 == 0 or it == iters - 1):
            print(f"  [{job['arm']} seed {seed}] iter {it:5d} loss {loss.item():.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
    train_s, train_cpu_s = time.time() - start, time.process_time() - cpu_start

    # predictions: on the validation set (the figures) and, for the baseline, on the planning split
    t0 = time.time()
    model.eval()
    detections = 0
    for gt, pred in job["predict"]:
        results = []
        with torch.no_grad():
            for info in load_coco(gt).images:
                rgb = read_image_rgb(Path(job["images"]) / info["file_name"])
                out = model([torch.from_numpy(rgb).permute(2, 0, 1).float().div(255)])[0]
                masks = (out["masks"][:, 0] >= 0.5).numpy()
                for box, label, score, mask in zip(out["boxes"].tolist(), out["labels"].tolist(),
                                                   out["scores"].tolist(), masks):
                    if not mask.any():
                        continue
                    x1, y1, x2, y2 = box
                    results.append({"image_id": int(info["id"]), "category_id": int(label),
                                    "score": float(score), "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "segmentation": rle_encode(mask)})
        Path(pred).parent.mkdir(parents=True, exist_ok=True)
        Path(pred).write_text(json.dumps(results))
        detections += len(results) if gt == job["val"] else 0
    folder = Path(job["predict"][0][1]).parent
    (folder / "train_log.json").write_text(json.dumps({"loss": log, "pasted": pasted_total}))
    result = {"arm": job["arm"], "seed": seed, "train_s": train_s, "s_per_iter": train_s / max(iters, 1),
              "cpu_s_per_iter": train_cpu_s / max(iters, 1),
              "predict_s": time.time() - t0, "detections": detections, "pasted": pasted_total,
              "final_loss": float(np.mean(log[-20:])) if log else float("nan")}
    # the marker last: a run killed before this point is run again by the next invocation
    (folder / "run.json").write_text(json.dumps({"job": job, "result": result}, indent=1))
    return result


def finished(job: dict) -> dict | None:
    """The result of an earlier run of exactly this job (its `run.json` and predictions), else None."""
    marker = Path(job["predict"][0][1]).parent / "run.json"
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    same = {k: v for k, v in job.items() if k != "verbose"}
    if not isinstance(done.get("job"), dict) or {k: v for k, v in done["job"].items() if k != "verbose"} != same \
            or not all(Path(p).is_file() for _, p in job["predict"]):
        return None
    return done["result"]


# ----------------------------------------------------------------------------- evaluation and report
METRICS = ("AP", "APr", "APc", "APf")
ARMS = ("baseline", "xpaste", "planned")
COMPARISONS = (("baseline", "xpaste"), ("xpaste", "planned"))


def _mean_sd(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)


def evaluate_runs(val: Path, preds: dict[tuple[str, int], Path], seeds: list[int], arms: tuple[str, ...]) -> dict:
    """What `xpaste eval --gt val --pred A --compare B --iou-type T` computes and prints, for each pair of
    `COMPARISONS` whose two arms ran."""
    from xpaste.evaluate.metrics import evaluate, format_table

    table = {arm: {"segm": [], "bbox": []} for arm in arms}
    for seed in seeds:
        for iou in ("segm", "bbox"):
            results = {arm: evaluate(val, preds[(arm, seed)], iou_type=iou) for arm in arms}
            for a, b in COMPARISONS:
                if a in results and b in results:
                    print(f"\nseed {seed}, {iou} (xpaste eval --compare):\n"
                          + format_table({a: results[a], b: results[b]}, delta=True))
            for arm in arms:
                table[arm][iou].append({"seed": seed, **{m: round(100 * results[arm][m], 2) for m in METRICS}})
    return table


def summary_table(table: dict) -> str:
    arms = list(table)
    pairs = [(a, b) for a, b in COMPARISONS if a in table and b in table]
    lines = []
    for iou in ("segm", "bbox"):
        lines.append(f"\n{iou} AP (x100), mean +- sd over seeds {[r['seed'] for r in table[arms[0]][iou]]}")
        lines.append(f"{'metric':<6} " + "".join(f"{a:>18}" for a in arms)
                     + "".join(f"{b + ' - ' + a:>22}" for a, b in pairs))
        for m in METRICS:
            cells, means = [], {}
            for arm in arms:
                mean, sd = _mean_sd([r[m] for r in table[arm][iou]])
                means[arm] = mean
                cells.append(f"{mean:6.1f} +- {sd:4.1f}")
            lines.append(f"{m:<6} " + "".join(f"{c:>18}" for c in cells)
                         + "".join(f"{means[b] - means[a]:>+22.1f}" for a, b in pairs))
        for arm in arms:
            lines.append(f"  {arm:<9} per seed: " + "; ".join(
                f"seed {r['seed']}: " + " ".join(f"{m} {r[m]:.1f}" for m in METRICS) for r in table[arm][iou]))
    return "\n".join(lines)


def target_check(table: dict) -> dict:
    """The targets fixed in the docstring, on the mask (segm) figures."""
    def mean(arm, m):
        return _mean_sd([r[m] for r in table[arm]["segm"]])

    check: dict = {}
    if "baseline" in table and "xpaste" in table:
        (base_r, _), (xp_r, _) = mean("baseline", "APr"), mean("xpaste", "APr")
        (base_f, base_f_sd), (xp_f, _) = mean("baseline", "APf"), mean("xpaste", "APf")
        check.update({"mask_APr_gain": round(xp_r - base_r, 2), "mask_APr_gain_ok": bool(xp_r - base_r >= 5.0),
                      "mask_APf_change": round(xp_f - base_f, 2), "mask_APf_baseline_sd": round(base_f_sd, 2),
                      "mask_APf_ok": bool(xp_f >= base_f - base_f_sd)})
    if "xpaste" in table and "planned" in table:
        (xp_r, _), (pl_r, _) = mean("xpaste", "APr"), mean("planned", "APr")
        check.update({"planned_APr_gain": round(pl_r - xp_r, 2), "planned_APr_gain_ok": bool(pl_r - xp_r >= 2.0)})
    return check


def describe_check(check: dict) -> str:
    parts = []
    if "mask_APr_gain" in check:
        parts.append(f"xpaste vs baseline: mask APr {check['mask_APr_gain']:+.1f} (target +5: "
                     f"{'met' if check['mask_APr_gain_ok'] else 'missed'}), APf {check['mask_APf_change']:+.1f} vs "
                     f"sd {check['mask_APf_baseline_sd']:.1f} ({'met' if check['mask_APf_ok'] else 'missed'})")
    if "planned_APr_gain" in check:
        parts.append(f"planned vs xpaste: mask APr {check['planned_APr_gain']:+.1f} (target +2: "
                     f"{'met' if check['planned_APr_gain_ok'] else 'missed'})")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 (default 3)")
    p.add_argument("--iters", type=int, default=None, help="training iterations per run (default 700; quick: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="images per iteration (default 4; quick: 1)")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--max-paste", type=int, default=5, help="pasted objects per image ~ U[0, max)")
    p.add_argument("--arms", default=",".join(ARMS),
                   help="comma-separated arms to run (planned needs baseline; default: all three)")
    p.add_argument("--workers", type=int, default=2, help="training processes at a time (one torch thread each)")
    p.add_argument("--quick", action="store_true", help="tiny task, 10 iterations, 1 seed: checks the loop runs")
    p.add_argument("--out", type=Path, default=Path("runs/effect"),
                   help="work folder: <out>/full (or <out>/quick) holds the task, the pool runs and the predictions; "
                        "finished runs in it are reused")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--verbose", action="store_true", help="print training losses")
    args = p.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms) or ("planned" in arms and "baseline" not in arms):
        p.error(f"--arms: a comma-separated subset of {','.join(ARMS)}; planned needs baseline")
    args.arms = tuple(a for a in ARMS if a in arms)
    if args.quick:
        args.seeds = 1 if "--seeds" not in (argv if argv is not None else sys.argv) else args.seeds
        args.iters = 10 if args.iters is None else args.iters
        args.batch_size = 1 if args.batch_size is None else args.batch_size
    args.iters = 700 if args.iters is None else args.iters
    args.batch_size = 4 if args.batch_size is None else args.batch_size
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.time()
    out = args.out / ("quick" if args.quick else "full")  # the two tasks never share a pipeline run
    out.mkdir(parents=True, exist_ok=True)
    task = build_task(out / "task", args.quick)
    t_task = time.time()
    per_category = QUICK["pool_per_category"] if args.quick else POOL_PER_CATEGORY
    budget = per_category * len(CATEGORIES)  # the planned round gets the uniform round's generation budget
    from xpaste.pool.store import InstancePool

    pool = build_pool(out, task["train"], per_category, progress=args.verbose) if "xpaste" in args.arms else None
    pool_counts = InstancePool.open(pool).counts() if pool is not None else {}
    t_pool = time.time()
    print(f"task: {out / 'task'} ({t_task - t_start:.1f}s); uniform pool: {pool} "
          f"{dict(sorted(pool_counts.items()))} ({t_pool - t_task:.1f}s)", flush=True)

    seeds = list(range(args.seeds))
    preds: dict[tuple[str, int], Path] = {}

    def job(arm: str, seed: int, pool_path=None, plan=None) -> dict:
        folder = out / "runs" / f"{arm}-seed{seed}"
        preds[(arm, seed)] = folder / "results.json"
        predict = [[str(task["val"]), str(folder / "results.json")]]
        if arm == "baseline" and "planned" in args.arms:
            predict.append([str(task["plan"]), str(folder / "plan_split_results.json")])
        return {"arm": arm, "seed": seed, "iters": args.iters, "batch": args.batch_size, "lr": args.lr,
                "warmup": 100, "max_paste": args.max_paste, "pool": None if pool_path is None else str(pool_path),
                "plan": None if plan is None else str(plan), "train": str(task["train"]), "val": str(task["val"]),
                "images": str(task["images"]), "predict": predict, "verbose": args.verbose}

    todo = [job(arm, seed, pool if arm == "xpaste" else None) for arm in ("baseline", "xpaste")
            if arm in args.arms for seed in seeds]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import multiprocessing

    runs, rounds = [], {}
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as ex:
        pending = {}

        def submit(j: dict) -> None:
            done = finished(j)
            if done is not None:
                print(f"  {j['arm']} seed {j['seed']}: reused the finished run in {Path(j['predict'][0][1]).parent}")
                after(j, done)
            else:
                pending[ex.submit(train_and_predict, j)] = j

        def after(j: dict, result: dict) -> None:
            runs.append(result)
            if j["arm"] == "baseline" and "planned" in args.arms:
                t0 = time.time()
                plan_path, planned_pool, plan = planned_round(out, task, j["seed"], Path(j["predict"][1][1]), budget,
                                                              progress=args.verbose)
                counts = InstancePool.open(planned_pool).counts()
                rounds[j["seed"]] = {"plan": str(plan_path), "pool": str(planned_pool),
                                     "generate": {c["name"]: c["generate"] for c in plan["categories"]},
                                     "paste_weight": {c["name"]: round(c["paste_weight"], 3)
                                                      for c in plan["categories"]},
                                     "pool_instances": {c[0]: int(counts.get(i + 1, 0))
                                                        for i, c in enumerate(CATEGORIES)},
                                     "seconds": round(time.time() - t0, 1)}
                print(f"  planned round, seed {j['seed']}: generate {rounds[j['seed']]['generate']}, "
                      f"pool {sum(counts.values())} instances ({time.time() - t0:.0f}s)", flush=True)
                submit(job("planned", j["seed"], planned_pool, plan_path))

        for j in todo:
            submit(j)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in done:
                after(pending.pop(f), f.result())
    t_train = time.time()
    for r in sorted(runs, key=lambda r: (ARMS.index(r["arm"]), r["seed"])):
        print(f"  {r['arm']:<8} seed {r['seed']}: {r['train_s']:.0f}s training ({r['s_per_iter']:.2f} s/iter, "
              f"{r['cpu_s_per_iter']:.2f} CPU-s/iter), {r['predict_s']:.0f}s predicting, {r['detections']} "
              f"detections, {r['pasted']} pasted objects, final loss {r['final_loss']:.3f}")
    table = evaluate_runs(task["val"], preds, seeds, args.arms)
    print(summary_table(table))
    check = target_check(table)
    total = time.time() - t_start
    print(f"\ntargets: {describe_check(check)}; total {total / 60:.1f} min (task+pool {t_pool - t_start:.0f}s, "
          f"training and planned rounds {t_train - t_pool:.0f}s, eval {time.time() - t_train:.0f}s)"
          + ("  [--quick: numbers are meaningless]" if args.quick else ""))
    counts = QUICK["counts"] if args.quick else [c[3] for c in CATEGORIES]
    report = {"arms": table, "target": check, "quick": bool(args.quick),
              "schedule": {"iters": args.iters, "batch_size": args.batch_size, "lr": args.lr, "seeds": seeds,
                           "max_paste": args.max_paste, "workers": args.workers, "arms": list(args.arms),
                           "generation_budget": budget},
              "task": {"image_size": SIZE, "train_images": QUICK["n_train"] if args.quick else N_TRAIN,
                       "val_images": QUICK["n_val"] if args.quick else N_VAL,
                       "plan_images": QUICK["n_plan"] if args.quick else N_PLAN,
                       "categories": [{"id": i + 1, "name": c[0], "frequency": c[4], "train_images": counts[i],
                                       "pool_instances": int(pool_counts.get(i + 1, 0))}
                                      for i, c in enumerate(CATEGORIES)]},
              "planned_rounds": {str(s): rounds[s] for s in sorted(rounds)},
              "runs": sorted(runs, key=lambda r: (ARMS.index(r["arm"]), r["seed"])), "seconds": round(total, 1)}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()

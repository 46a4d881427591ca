"""build-pool as X-Paste builds it (method.md, Stage 3), checked against hand-written references: the per-category
bar by a plain loop over the score table, dedup opt-in, presets, kill-and-resume compared byte for byte with an
uninterrupted build, and DiverGen's views (PIL / scipy references) and filter (the tiny open_clip model)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.stages.build_pool import PRESETS, apply_preset, build_pool

ROOT = Path(__file__).resolve().parents[1]


def config(run: Path, **build) -> dict:
    b = {"out": None, "preset": "xpaste", "t": 21.0, "d": 1.0, "area_min": 0.05, "area_max": 0.95, "dedup": None,
         "real_pool": None, "real_min_similarity": 0.6, "flush_every": 4}
    b.update(build)
    return {"run_dir": str(run), "device": "cpu", "categories": {"source": None, "select": None},
            "segment": {"segmenters": ["s1", "s2"]}, "score": {"clip": "none", "pretrained": None, "batch_size": 4},
            "build_pool": b}


def write_run(run: Path, table: list[dict], seed: int = 0, size: int = 48) -> None:
    """A run folder from a table of (candidate, category, segmenter, score, area, embedding) rows: random images,
    and per row a disc mask (soft values) so every cut-out differs."""
    from xpaste.io import write_json_atomic
    from xpaste.stages.candidates import candidate_row, candidate_schema
    from xpaste.stages.score import ScoreStage
    from xpaste.stages.segment import SegmentStage
    from xpaste.pipeline.shards import write_shard

    r = np.random.default_rng(seed)
    write_json_atomic(run / "categories.json", {"categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}]})
    (run / "images").mkdir(parents=True, exist_ok=True)
    (run / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    cands, segs, scores = {}, [], []
    for row in table:
        cid = row["candidate"]
        if cid not in cands:
            Image.fromarray(r.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(run / "images" / f"{cid}.png")
            cands[cid] = candidate_row(candidate_id=cid, kind="object", category_id=row["category"],
                                       category=["cup", "dog"][row["category"] - 1], path=f"images/{cid}.png",
                                       source="generated", model="m", prompt="p", seed=0, steps=1, guidance=1.0,
                                       width=size, height=size, url="")
        radius = r.uniform(6, 20)
        soft = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < radius**2, 220, 20).astype(np.uint8)
        rel = f"masks/{cid}-{row['segmenter']}.png"
        Image.fromarray(soft).save(run / rel)
        segs.append({"candidate_id": cid, "category_id": row["category"], "segmenter": row["segmenter"],
                     "mask_path": rel, "area_frac": row["area"], "components": 1})
        emb = row.get("embedding")
        if emb is None:
            emb = r.normal(size=8)
        emb = np.asarray(emb, np.float32) / np.linalg.norm(emb)
        scores.append({"candidate_id": cid, "category_id": row["category"], "segmenter": row["segmenter"],
                       "clip_score": row["score"], "embedding": emb.tolist()})
    write_shard(run / "generate", 0, list(cands.values()), candidate_schema(), [])
    write_shard(run / "segment", 0, segs, SegmentStage.schema(None), [])
    write_shard(run / "score", 0, scores, ScoreStage.schema(None), [])


def random_table(seed: int, n_images: int = 24) -> list[dict]:
    r = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        cat = 1 + i % 2
        for seg in ("s1", "s2"):
            area = float(r.choice([0.0, 0.01, 0.3, 0.6, 0.97])) if r.random() < 0.5 else float(r.uniform(0.05, 0.95))
            score = float("nan") if r.random() < 0.05 else float(r.uniform(5, 40))
            rows.append({"candidate": f"c{i:03d}", "category": cat, "segmenter": seg, "score": score, "area": area})
    return rows


def hand_decisions(table: list[dict], t: float, d: float, lo: float, hi: float) -> dict[str, tuple]:
    """The rules of method.md written as a plain loop: candidate -> (segmenter, decision, bar)."""
    bars = {}
    for cat in {row["category"] for row in table}:
        finite = [row["score"] for row in table if row["category"] == cat and row["score"] == row["score"]]
        bars[cat] = min(t, max(finite) - d) if finite else t
    out = {}
    for cid in sorted({row["candidate"] for row in table}):
        rows = [row for row in table if row["candidate"] == cid]
        best = None
        for row in rows:  # the highest score among non-empty masks; a NaN only wins when nothing else can
            if row["area"] <= 0:
                continue
            if best is None or (row["score"] == row["score"] and not best["score"] >= row["score"]):
                best = row
        if best is None:
            out[cid] = (rows[0]["segmenter"], "empty mask", bars[rows[0]["category"]])
        elif not lo <= best["area"] <= hi:
            out[cid] = (best["segmenter"], "area out of range", bars[best["category"]])
        elif not best["score"] >= bars[best["category"]]:
            out[cid] = (best["segmenter"], "below CLIP bar", bars[best["category"]])
        else:
            out[cid] = (best["segmenter"], "kept", bars[best["category"]])
    return out


def read_decisions(run: Path) -> dict[str, dict]:
    return {d["candidate_id"]: d for d in pq.read_table(run / "build_pool" / "decisions.parquet").to_pylist()}


# --- the per-category bar ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed,t", [(0, 21.0), (1, 100.0), (2, 30.0), (3, 100.0)])
def test_bar_max_over_every_segmenter_and_image_score(tmp_path, seed, t):
    table = random_table(seed)
    write_run(tmp_path, table, seed)
    summary = build_pool(tmp_path, config(tmp_path, t=t), progress=False)
    got = read_decisions(tmp_path)
    want = hand_decisions(table, t, 1.0, 0.05, 0.95)
    assert set(got) == set(want)
    for cid, (segmenter, decision, bar) in want.items():
        assert (got[cid]["segmenter"], got[cid]["decision"]) == (segmenter, decision), cid
        assert got[cid]["bar"] == pytest.approx(bar)
        assert bool(got[cid]["instance_id"]) == (decision == "kept")
    assert summary["added"] == sum(v[1] == "kept" for v in want.values())


def test_bar_counts_a_score_whose_mask_is_out_of_range(tmp_path):
    """The best score of the category belongs to a whole-image mask (area 0.99) of a losing image: with t = 100
    the bar is 40 - 1 = 39, so the 38 is dropped; a bar over in-range winners only would keep it."""
    table = [{"candidate": "a", "category": 1, "segmenter": "s1", "score": 40.0, "area": 0.99},
             {"candidate": "a", "category": 1, "segmenter": "s2", "score": 12.0, "area": 0.5},
             {"candidate": "b", "category": 1, "segmenter": "s1", "score": 38.0, "area": 0.5},
             {"candidate": "b", "category": 1, "segmenter": "s2", "score": 41.5, "area": 0.0}]  # empty: never wins
    write_run(tmp_path, table)
    build_pool(tmp_path, config(tmp_path, t=100.0), progress=False)
    got = read_decisions(tmp_path)
    assert got["a"]["decision"] == "area out of range" and got["a"]["segmenter"] == "s1"
    assert got["b"]["bar"] == pytest.approx(40.5)  # the empty mask's score counts in the max too: 41.5 - 1
    assert got["b"]["decision"] == "below CLIP bar" and got["b"]["segmenter"] == "s1"


# --- dedup and presets ------------------------------------------------------------------------------

def test_near_duplicate_removal_is_opt_in(tmp_path):
    e = [1.0, 0, 0, 0, 0, 0, 0, 0]
    table = [{"candidate": f"c{i}", "category": 1, "segmenter": "s1", "score": 30.0 - i, "area": 0.4, "embedding": e}
             for i in range(3)]
    write_run(tmp_path / "off", table)
    assert build_pool(tmp_path / "off", config(tmp_path / "off"), progress=False)["decisions"] == {"kept": 3}
    write_run(tmp_path / "on", table)
    summary = build_pool(tmp_path / "on", config(tmp_path / "on", dedup=0.95), progress=False)
    assert summary["decisions"] == {"kept": 1, "near duplicate": 2}
    assert read_decisions(tmp_path / "on")["c0"]["decision"] == "kept"  # the best survives


def test_presets_fill_unset_options_and_check_their_needs():
    assert PRESETS["xpaste"]["t"] == 21.0 and PRESETS["xpaste"]["d"] == 1.0
    assert (PRESETS["xpaste"]["area_min"], PRESETS["xpaste"]["area_max"]) == (0.05, 0.95)
    assert PRESETS["xpaste"]["dedup"] is None and PRESETS["divergen"]["real_min_similarity"] == 0.6
    unset = {k: None for k in ("t", "d", "area_min", "area_max", "dedup", "real_pool", "real_min_similarity")}
    got = apply_preset(unset)
    assert got["preset"] == "xpaste" and not got["real_filter"]
    assert {k: got[k] for k in ("t", "d", "area_min", "area_max", "dedup")} == \
        {"t": 21.0, "d": 1.0, "area_min": 0.05, "area_max": 0.95, "dedup": None}
    assert apply_preset({**unset, "t": 25.0})["t"] == 25.0  # a given value wins over the preset
    with pytest.raises(XPasteError, match="real_pool"):
        apply_preset({**unset, "preset": "divergen"})
    got = apply_preset({**unset, "preset": "divergen", "real_pool": "/x"})
    assert got["real_filter"] and got["real_min_similarity"] == 0.6
    assert apply_preset({**unset, "real_pool": "/x"})["real_filter"]  # an explicit real pool turns it on
    with pytest.raises(XPasteError, match="unknown build_pool.preset"):
        apply_preset(unset, "detectron")


def test_preset_in_the_pipeline_config():
    from xpaste.stages.config import load_config

    cfg = load_config(None, ["build_pool.preset=divergen"])
    section = cfg["build_pool"] if isinstance(cfg, dict) else cfg.build_pool
    assert (section["preset"] if isinstance(section, dict) else section.preset) == "divergen"
    default = load_config(None, [])
    section = default["build_pool"] if isinstance(default, dict) else default.build_pool
    import dataclasses

    options = dict(section) if isinstance(section, dict) else dataclasses.asdict(section)
    assert options["preset"] in (None, "xpaste") and options["dedup"] is None  # dedup off by default
    resolved = apply_preset(options)
    assert resolved["preset"] == "xpaste" and (resolved["t"], resolved["d"]) == (21.0, 1.0)
    assert not resolved["real_filter"]
    with pytest.raises(XPasteError):
        load_config(None, ["build_pool.preset=detectron"])


# --- kill and resume --------------------------------------------------------------------------------

BUILD = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_build_pool import config
from xpaste.stages.build_pool import build_pool
run = Path(sys.argv[1])
build_pool(run, config(run, d=1000.0, area_min=0.0, area_max=1.0, flush_every=4), progress=False)
"""


def outputs(run: Path) -> tuple:
    from xpaste import InstancePool

    summary = json.loads((run / "build_pool" / "summary.json").read_text())
    summary.pop("seconds")
    summary.pop("pool")
    # where the pixels lie inside the pool's data files (shard, offset) is the pool's business: a resumed
    # writer may append the remaining cut-outs elsewhere; what is stored, and in which order, must be equal
    location = {"path", "shard", "offset", "nbytes"}
    pool = InstancePool.open(run / "pool")
    records = [{k: v for k, v in r.items() if k not in location} for r in pool.records().to_pylist()]
    records = [(r, pool.rgba(i).tobytes()) for i, r in enumerate(records)]
    return (run / "build_pool" / "decisions.parquet").read_bytes(), summary, records


def test_killed_build_resumes_to_the_same_decisions_byte_for_byte(tmp_path):
    from xpaste import InstancePool

    table = [{"candidate": f"c{i:03d}", "category": 1 + i % 2, "segmenter": s, "score": float(10 + (i * 7 + j) % 25),
              "area": 0.3} for i in range(120) for j, s in enumerate(("s1", "s2"))]
    write_run(tmp_path / "ref", table, seed=4)
    build_pool(tmp_path / "ref", config(tmp_path / "ref", d=1000.0, area_min=0.0, area_max=1.0), progress=False)
    want = outputs(tmp_path / "ref")
    assert want[1]["added"] == 120 and len(want[2]) == 120

    script = BUILD.format(tests=str(ROOT / "tests"))
    killed_mid_run = 0
    for target in (9, 57):
        run = tmp_path / f"killed-{target}"
        write_run(run, table, seed=4)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen([sys.executable, "-c", script, str(run)], env=env)
        while p.poll() is None:
            try:
                if len(InstancePool.open(run / "pool")) >= target:
                    break
            except XPasteError:
                pass  # not created yet
            time.sleep(0.002)
        mid_run = p.poll() is None
        p.send_signal(signal.SIGKILL)
        p.wait()
        if mid_run:
            killed_mid_run += 1
            assert not (run / "build_pool" / "decisions.parquet").exists()
        build_pool(run, config(run, d=1000.0, area_min=0.0, area_max=1.0), progress=False)
        assert outputs(run) == want
        build_pool(run, config(run, d=1000.0, area_min=0.0, area_max=1.0), progress=False)  # a rerun: same again
        assert outputs(run) == want
    assert killed_mid_run >= 1, "no kill landed in the middle of a build"


def test_identical_cutouts_share_one_pool_row(tmp_path):
    table = [{"candidate": c, "category": 1, "segmenter": "s1", "score": 30.0, "area": 0.3} for c in ("a", "b")]
    write_run(tmp_path, table)
    (tmp_path / "images" / "b.png").write_bytes((tmp_path / "images" / "a.png").read_bytes())
    (tmp_path / "masks" / "b-s1.png").write_bytes((tmp_path / "masks" / "a-s1.png").read_bytes())
    summary = build_pool(tmp_path, config(tmp_path), progress=False)
    got = read_decisions(tmp_path)
    assert got["a"]["decision"] == "kept" and got["b"]["decision"] == "identical pixels"
    assert got["a"]["instance_id"] == got["b"]["instance_id"] != ""
    assert summary["added"] == 1


# --- DiverGen: views and the real-instance filter ---------------------------------------------------

def pil_on_black(rgb: np.ndarray, soft: np.ndarray) -> np.ndarray:
    binary = Image.fromarray(np.asarray(soft, np.uint8)).point(lambda v: 255 if v > 128 else 0)
    return np.asarray(Image.composite(Image.fromarray(rgb), Image.new("RGB", binary.size), binary))


def scipy_real_view(image: np.ndarray, mask: np.ndarray, pad: int = 40) -> np.ndarray:
    """DiverGen's `--mode padding --fill blur` written with scipy: a 10 x 10 mean filter (mirror borders, as
    OpenCV's default reflect-101), pixels outside the mask replaced by it, then the box grown by 40 px."""
    from scipy import ndimage as ndi

    blurred = np.stack([ndi.uniform_filter(image[..., c].astype(np.float64), size=10, mode="mirror")
                        for c in range(3)], axis=-1)
    shown = np.where(mask[..., None], image.astype(np.float64), blurred)
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return shown[max(ys.min() - pad, 0):min(ys.max() + 1 + pad, h), max(xs.min() - pad, 0):min(xs.max() + 1 + pad, w)]


@pytest.mark.parametrize("seed", range(4))
def test_divergen_views_match_hand_references(seed):
    from xpaste.score import composite_on_black, real_instance_view

    r = np.random.default_rng(seed)
    h, w = int(r.integers(20, 160)), int(r.integers(20, 160))
    image = r.integers(0, 256, (h, w, 3), dtype=np.uint8)
    soft = r.integers(0, 256, (h, w), dtype=np.uint8)
    np.testing.assert_array_equal(composite_on_black(image, soft), pil_on_black(image, soft))
    mask = np.zeros((h, w), bool)
    y0, x0 = int(r.integers(0, h - 5)), int(r.integers(0, w - 5))
    mask[y0 : y0 + int(r.integers(1, 30)), x0 : x0 + int(r.integers(1, 30))] = True
    got = real_instance_view(image, mask)
    want = scipy_real_view(image, mask)
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0  # rounding of the mean
    np.testing.assert_array_equal(got[mask[max(y0 - 40, 0):, max(x0 - 40, 0):][: got.shape[0], : got.shape[1]]],
                                  image[mask])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tiny_models import make_tiny_open_clip

    from xpaste.score.clip import ClipScorer

    folder = make_tiny_open_clip(tmp_path_factory.mktemp("openclip"))
    return f"local-dir:{folder}", ClipScorer(f"local-dir:{folder}", device="cpu")


def test_divergen_filter_mean_cosine_to_real_instances(tmp_path, tiny_clip):
    """Every compared cut-out's real_similarity equals the mean cosine between its black composite and the
    DiverGen views of its category's real instances, built by hand from the source images (pycocotools masks,
    scipy blur); below the threshold the cut-out is dropped, and categories without real instances pass."""
    from coco_fixtures import write_dataset
    from pycocotools.coco import COCO

    from xpaste.pool.importers import import_coco

    spec, scorer = tiny_clip
    ann, images_dir = write_dataset(tmp_path / "data", n_images=4, size=(120, 140))
    import_coco(ann, images_dir, tmp_path / "real", min_area=50, progress=False)
    coco = COCO(str(ann))
    table = [{"candidate": f"c{i}", "category": 1 + i % 2, "segmenter": "s1", "score": 30.0, "area": 0.3}
             for i in range(6)]
    run = tmp_path / "run"
    write_run(run, table, seed=9)
    # a threshold in the middle of the measured similarities, so both outcomes occur
    cfg = config(run, preset="divergen", real_pool=str(tmp_path / "real"), real_min_similarity=-1.0)
    cfg["score"]["clip"] = spec
    build_pool(run, cfg, progress=False)
    first = read_decisions(run)

    def hand(cat: int, d: dict) -> float:
        views = []
        for a in coco.loadAnns(coco.getAnnIds(catIds=[cat], iscrowd=False)):
            mask = coco.annToMask(a).astype(bool)
            if mask.sum() < 50:
                continue
            info = coco.loadImgs(a["image_id"])[0]
            image = np.asarray(Image.open(images_dir / info["file_name"]).convert("RGB"))
            views.append(np.clip(np.rint(scipy_real_view(image, mask)), 0, 255).astype(np.uint8))
        ref = scorer.embed_images(views)
        gen = scorer.embed_images([pil_on_black(np.asarray(Image.open(run / d["path"]).convert("RGB")),
                                                np.asarray(Image.open(run / d["mask_path"])))])[0]
        return float(np.mean(ref @ gen))

    sims = {}
    for cid, d in first.items():
        sims[cid] = hand(d["category_id"], d)
        assert d["real_similarity"] == pytest.approx(sims[cid], abs=2e-3), cid
    threshold = float(np.median(list(sims.values())))
    cfg["build_pool"]["real_min_similarity"] = threshold
    run2 = tmp_path / "run2"
    write_run(run2, table, seed=9)
    cfg["run_dir"] = str(run2)
    summary = build_pool(run2, cfg, progress=False)
    got = read_decisions(run2)
    for cid, d in got.items():
        want = "kept" if d["real_similarity"] >= threshold else "far from real instances"
        assert d["decision"] == want
    assert summary["preset"] == "divergen" and 0 < summary["added"] < len(table)


def test_no_import_cycle_through_the_pool_building_modules():
    """Every `import xpaste...` (top-level or inside a function) read with ast: no cycle passes through
    stages/segment, stages/score, stages/build_pool, score/* or segment/* (pipeline/masks <-> pipeline/stages was one)."""
    import ast

    src = ROOT / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (src / "xpaste").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from xpaste.pipeline import stages` imports the module xpaste.pipeline.stages
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                targets = []
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph.get(m, ()))
        return False

    mine = [m for m in modules if m in ("xpaste.stages.segment", "xpaste.stages.score", "xpaste.stages.build_pool",
                                         "xpaste.ops.masks") or m.startswith(("xpaste.score", "xpaste.segment"))]
    assert "xpaste.stages.run" in modules and len(mine) >= 10
    cycles = [(m, d) for m in mine for d in graph[m] if reaches(d, m)]
    assert not cycles, cycles


def test_cli_preset_flag(tmp_path, capsys):
    """`--preset divergen` without a real pool fails in one line (exit 2) before the pool is created;
    `--preset xpaste` builds with the paper's defaults (dedup off) and records the preset."""
    from xpaste.cli import main

    table = [{"candidate": f"c{i}", "category": 1, "segmenter": "s1", "score": 30.0, "area": 0.4,
              "embedding": [1.0, 0, 0, 0, 0, 0, 0, 0]} for i in range(3)]
    write_run(tmp_path, table)
    assert main(["build-pool", "--run", str(tmp_path), "--preset", "divergen"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "real_pool" in err[0]
    assert not (tmp_path / "pool").exists() and not (tmp_path / "build_pool").exists()
    assert main(["build-pool", "--run", str(tmp_path), "--preset", "xpaste"]) == 0
    summary = json.loads((tmp_path / "build_pool" / "summary.json").read_text())
    assert summary["preset"] == "xpaste" and summary["decisions"] == {"kept": 3}  # identical embeddings kept

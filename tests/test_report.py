"""`xpaste report`: the page's structure, escaping and links, and a real render in headless Chromium."""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from coco_fixtures import write_dataset
from conftest import make_cutout
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.report.html import NO_CLIP_NOTE, SECTIONS, write_report

SECTION_IDS = [sid for sid, _ in SECTIONS]
EVIL = "<b>/x"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "report_screenshots"


# ----------------------------------------------------------------------------- inputs built with the real code
def _make_pool(root: Path) -> Path:
    from xpaste.pool.store import InstancePool

    rng = np.random.default_rng(3)
    cats = [{"id": 1, "name": "cup"}, {"id": 2, "name": EVIL}, {"id": 3, "name": "ünï & co"}]
    with InstancePool.create(root, cats, config={"score": {"clip": "ViT-B-32", "pretrained": "openai"}}) as pool:
        for i in range(14):
            pool.add(make_cutout(rng, int(rng.integers(12, 60)), int(rng.integers(12, 60)), "blob" if i % 2 else "ellipse"),
                     1 + i % 3, source=("generated", "retrieved")[i % 2], model="sd-test" if i % 2 == 0 else "",
                     segmenter=("grabcut", "rembg:u2net")[i % 3 % 2], clip_score=float(rng.uniform(0.15, 0.35)),
                     area_frac=float(rng.uniform(0.05, 0.8)), prompt=f"a photo of <{i}>")
    return root


def _make_run(root: Path) -> Path:
    """A run folder as build-pool leaves it: candidate images, soft masks and decisions.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(4)
    (root / "candidates").mkdir(parents=True)
    (root / "masks").mkdir()
    names = {1: "cup", 2: EVIL, 3: "ünï & co"}
    reasons = ["kept", "below CLIP bar", "area out of range", "near duplicate", "empty mask", "far from real instances"]
    rows = []
    for i in range(18):
        cid = 1 + i % 3
        img = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
        mask = np.zeros((64, 80), np.uint8)
        decision = reasons[i % len(reasons)]
        if decision != "empty mask":
            mask[10 + i % 5 : 50, 12 : 60 - i % 7] = 255
        Image.fromarray(img).save(root / "candidates" / f"{i:04d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{i:04d}.png")
        rows.append({"candidate_id": f"c{i:04d}", "category_id": cid, "category": names[cid],
                     "path": f"candidates/{i:04d}.png", "source": ("generated", "retrieved")[i % 2],
                     "segmenter": ("grabcut", "rembg:u2net", "clipseg")[i % 3], "clip_score": float(0.1 + i / 60),
                     "area_frac": float(mask.mean() / 255), "mask_path": f"masks/{i:04d}.png", "bar": 0.2,
                     "decision": decision})
    rows.append({**rows[1], "candidate_id": "c9999", "path": "candidates/gone.png", "mask_path": None})  # no image
    (root / "build_pool").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "build_pool" / "decisions.parquet")
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from xpaste.augment import augment_dataset
    from xpaste.pool.importers import import_coco

    root = tmp_path_factory.mktemp("report")
    ann, images = write_dataset(root / "data", n_images=3)
    import_coco(ann, images, root / "gt_pool", min_area=100, progress=False)
    augment_dataset(ann, images, root / "gt_pool", root / "aug", copies=2, seed=0, progress=False, max_paste=3)
    return {"pool": _make_pool(root / "pool"), "run": _make_run(root / "run"), "augmented": root / "aug",
            "dataset": ann, "gt_pool": root / "gt_pool", "root": root}


@pytest.fixture(scope="module")
def report(inputs):
    out = inputs["root"] / "report"
    page = write_report(out, pool=inputs["pool"], run=inputs["run"], augmented=inputs["augmented"],
                        dataset=inputs["dataset"])
    return page


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag in ("link", "script") or (tag == "a" and not str(a.get("href", "#")).startswith("#")):
            self.links.append((tag, a))


def _parse(page: Path) -> _Page:
    p = _Page()
    p.feed(page.read_text(encoding="utf-8"))
    return p


# ----------------------------------------------------------------------------- structure
def test_sections_images_and_escaping(report):
    text = report.read_text(encoding="utf-8")
    page = _parse(report)
    for sid in SECTION_IDS:
        assert page.ids.count(sid) == 1, sid
    assert len(page.imgs) > 30
    for src in page.imgs:
        assert re.fullmatch(r"assets/(plot|thumb|gallery)-\d{6}\.(png|jpg)", src), src  # never from data
        assert (report.parent / src).is_file(), src
    assert not page.links  # self-contained: no stylesheets, scripts or external links
    assert EVIL not in text and "&lt;b&gt;/x" in text
    assert "ünï &amp; co" in text and "&lt;3&gt;" in text  # unicode kept, prompts in titles escaped
    for reason in ("below CLIP bar", "area out of range", "near duplicate", "far from real instances", "image missing"):
        assert reason in text
    assert "ViT-B-32" in text and NO_CLIP_NOTE not in text
    assert "pasted instance" in text and "rare</b>" in text


def test_contact_sheet_sorted_by_clip_score(report, inputs):
    from xpaste.pool.store import InstancePool

    text = report.read_text(encoding="utf-8")
    block = text.split('id="cat-1"')[1].split("<h4>")[0]
    shown = [float(s) for s in re.findall(r"<figcaption>([0-9.]+)<br>", block)]
    table = InstancePool.open(inputs["pool"]).records().to_pylist()
    expected = sorted((r["clip_score"] for r in table if r["category_id"] == 1), reverse=True)
    assert shown == pytest.approx(expected, abs=1e-3)


def test_missing_inputs_and_no_clip_note(inputs, tmp_path):
    page = write_report(tmp_path / "r", pool=inputs["gt_pool"])  # imported real instances carry no CLIP score
    text = page.read_text(encoding="utf-8")
    assert NO_CLIP_NOTE in text
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in text
    assert "No augmented folder given" in text and "No target dataset given" in text
    assert "Win rates need the run folder" not in text  # imported instances have no segmenter
    for src in _parse(page).imgs:
        assert (page.parent / src).is_file()
    # A rerun with fewer images removes the assets the old page used and nothing else.
    (tmp_path / "r" / "assets" / "keep.txt").write_text("mine")
    before = len(list((tmp_path / "r" / "assets").glob("*")))
    page = write_report(tmp_path / "r", pool=inputs["gt_pool"], max_per_category=1)
    after = sorted(p.name for p in (tmp_path / "r" / "assets").glob("*"))
    assert len(after) < before and "keep.txt" in after
    assert {f"assets/{n}" for n in after} - {"assets/keep.txt"} == set(_parse(page).imgs)


def test_in_memory_pool_and_no_inputs(small_pool, tmp_path):
    text = write_report(tmp_path / "mem", pool=small_pool).read_text(encoding="utf-8")
    assert "30 instances in 5 categories" in text and "in memory" in text and NO_CLIP_NOTE in text
    empty = write_report(tmp_path / "none").read_text(encoding="utf-8")
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in empty
    assert empty.count('class="missing"') == 5 and "<img" not in empty


def test_cli(inputs, tmp_path):
    from typer.testing import CliRunner

    import xpaste.commands.report  # noqa: F401 - registers the command
    from xpaste.commands.app import app

    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["report", str(inputs["pool"]), str(inputs["augmented"]), str(inputs["run"]),
                                 "--dataset", str(inputs["dataset"]), "--out", str(out), "--gallery", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == str(out / "index.html")
    # _make_pool's pool did not feed the augmented set (the gt pool did): one warning line, the page still written.
    assert [line for line in lines[:-1] if line.strip()] == [
        line for line in lines if line.startswith("xpaste: WARNING: the augmented set was pasted from another pool")]
    assert (out / "index.html").is_file()
    unknown = inputs["root"] / "data" / "images"
    bad = runner.invoke(app, ["report", str(unknown), "--out", str(out)])
    assert isinstance(bad.exception, XPasteError) and str(unknown) in str(bad.exception)
    wrong = runner.invoke(app, ["report", str(inputs["pool"]), "--run", str(inputs["gt_pool"]), "--out", str(out)])
    assert isinstance(wrong.exception, XPasteError) and "--run" in str(wrong.exception)
    gone = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(out)])
    assert isinstance(gone.exception, XPasteError) and "nope" in str(gone.exception)
    two = runner.invoke(app, ["report", str(inputs["pool"]), str(inputs["gt_pool"]), "--out", str(out)])
    assert isinstance(two.exception, XPasteError) and "two pool folders" in str(two.exception)
    with pytest.raises(XPasteError, match="decisions.parquet"):
        write_report(tmp_path / "x", run=inputs["pool"])


# ----------------------------------------------------------------------------- headless Chromium
@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium, installed with apt-get once (under a file lock, for parallel test workers)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    with open(Path(tempfile.gettempdir()) / "xpaste-chromium-install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = shutil.which("chromium")
        if found:
            return found
        sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        log = ""
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            try:
                r = subprocess.run(sudo + cmd, check=False, capture_output=True, text=True, env=env, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                r, log = None, str(e)
            if r is None or r.returncode != 0:
                log = log or (r.stderr or r.stdout)[-400:]
                break
    found = shutil.which("chromium")
    if not found:
        pytest.skip(f"chromium is missing and `apt-get install chromium` failed: {log.strip()}")
    return found


def _run_chromium(exe: str, work: Path, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    profile = Path(tempfile.mkdtemp(prefix="profile-", dir=work))
    cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    env = {**os.environ, "HOME": str(work)}  # crash reports and caches stay out of the real home
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}\n{r.stderr[-2000:]}"
    return r


def _screenshot(exe: str, url: str, png: Path, work: Path, height: int = 900) -> np.ndarray:
    # The virtual-time budget lets every image load and decode before the shot (else lower ones are missing).
    _run_chromium(exe, work, f"--screenshot={png}", f"--window-size=1366,{height}", "--virtual-time-budget=5000",
                  "--run-all-compositor-stages-before-draw", url)
    assert png.is_file()
    with Image.open(png) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.shape == (height, 1366, 3)
    return pixels


CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.images = String(imgs.length);
  ["gallery", "histograms"].forEach(function (id) {
    var top = document.getElementById(id).getBoundingClientRect().top + window.scrollY;
    document.body.dataset[id + "Top"] = String(Math.round(top));
  });
  document.body.dataset.broken = String(imgs.filter(function (i) {
    return !(i.complete && i.naturalWidth > 0); }).length);
});
</script>"""


def _render_check(exe: str, page: Path, work: Path, section: str = "gallery") -> int:
    """Screenshot + broken-image check; returns the offset of `section` (gallery, histograms) from the page top."""
    pixels = _screenshot(exe, page.as_uri(), work / "shot.png", work)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # not a blank page
    # The check runs on a copy beside the page (same relative links), so the report itself stays script-free.
    check = page.with_name("_check.html")
    check.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = _run_chromium(exe, work, "--dump-dom", "--window-size=1366,900", "--virtual-time-budget=5000",
                       check.as_uri()).stdout
    check.unlink()
    images = re.search(r'data-images="(\d+)"', dom)
    broken = re.search(r'data-broken="(\d+)"', dom)
    assert images and broken, dom[:500]
    assert int(images.group(1)) == len(_parse(page).imgs) and int(images.group(1)) > 0
    assert broken.group(1) == "0"
    for sid in SECTION_IDS:
        assert f'id="{sid}"' in dom
    return int(re.search(rf'data-{section}-top="(\d+)"', dom).group(1))


def test_renders_in_chromium(chromium, report, tmp_path):
    _render_check(chromium, report, tmp_path)


@pytest.mark.skipif(not os.environ.get("XPASTE_SAVE_SCREENSHOTS"), reason="set XPASTE_SAVE_SCREENSHOTS=1 to "
                    "write docs/report_screenshots/")
def test_save_screenshots(chromium, tmp_path):
    """The README's screenshots of the `make demo` report (demo_top, demo_histograms, demo_gallery): the demo
    itself runs into a temp folder (offline, seconds) and its report is shot."""
    from xpaste.demo import main as demo_main

    assert demo_main(["--out", str(tmp_path / "demo"), "--copies", "2", "--workers", "1"]) == 0
    page = tmp_path / "demo" / "report" / "index.html"
    tops = {sid: _render_check(chromium, page, tmp_path, sid) for sid in ("histograms", "gallery")}
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    top_shot = _screenshot(chromium, page.as_uri(), tmp_path / "top.png", tmp_path)
    # Headless --screenshot of `index.html#gallery` (or of a page scrolled by script) comes out blank: the
    # scrolled viewport is not painted. So shoot a window tall enough to hold the section and crop it.
    tall = _screenshot(chromium, page.as_uri(), tmp_path / "tall.png", tmp_path, height=max(tops.values()) + 900)
    shots = {"demo_top.png": top_shot,
             **{f"demo_{sid}.png": tall[top - 12 : top + 888] for sid, top in tops.items()}}
    for name, pixels in shots.items():
        # 256 colours keep the committed PNGs small (~4x) and still read well.
        Image.fromarray(pixels).quantize(256, method=Image.Quantize.FASTOCTREE).save(SCREENSHOTS / name, optimize=True)
    for stale in ("report_top.png", "report_gallery.png"):  # written by an older version of this test
        (SCREENSHOTS / stale).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- what the page says it shows
def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def test_counts_say_how_many_of_how_many(inputs, tmp_path):
    # _make_pool: 14 instances, category 1 + i % 3 -> cup (id 1) holds i = 0, 3, 6, 9, 12: 5 cut-outs.
    # _make_run: cup candidates i = 0, 3, 6, 9, 12, 15 with decisions kept, near duplicate, kept, near duplicate,
    # kept, near duplicate: 3 rejected.
    text = _text(write_report(tmp_path / "r", pool=inputs["pool"], run=inputs["run"], max_per_category=2))
    cup = text.split('id="cat-1"')[1].split('<div class="cat">')[0]
    assert "showing 2 of 5 cut-outs in the pool, 3 rejected" in cup
    assert "Rejected candidates (showing 2 of 3)" in cup
    assert "Showing all 3 categories" in text
    few = _text(write_report(tmp_path / "c", pool=inputs["pool"], max_categories=2))
    assert "Showing the first 2 of 3 categories" in few
    # The augmented folder holds 3 images x 2 copies = 6; a gallery of 4 says so.
    gallery = _text(write_report(tmp_path / "g", augmented=inputs["augmented"], gallery=4))
    assert "showing 4 of 6 images" in gallery


def _unscored_run(src: Path, dst: Path) -> Path:
    """The fixture run as build-pool leaves it without CLIP (score.clip: null): every clip_score null, with the
    records a real run writes: segment/stage.json, build_pool/summary.json and build_pool/stage-<pool>.json."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(src, dst)
    table = pq.read_table(dst / "build_pool" / "decisions.parquet").to_pylist()
    for row in table:
        row["clip_score"] = None
    pq.write_table(pa.Table.from_pylist(table), dst / "build_pool" / "decisions.parquet")
    (dst / "segment").mkdir()
    (dst / "segment" / "stage.json").write_text("{}")
    (dst / "build_pool" / "summary.json").write_text(json.dumps({"pool": str(dst / "pool"), "preset": "divergen"}))
    (dst / "build_pool" / "stage-0123456789ab.json").write_text(json.dumps({
        "options": {"preset": "divergen", "t": 25.0, "d": 2.0, "area_min": 0.1, "area_max": 0.9, "dedup": None,
                    "real_filter": True, "real_min_similarity": 0.6, "alpha": "binary"},
        "out": str((dst / "pool").resolve()), "score": {"clip": None, "pretrained": None},
        "segmenters": ["rembg:u2net", "grabcut"]}))
    return dst


def test_empty_plots_hidden_and_what_ran(inputs, tmp_path):
    run = _unscored_run(inputs["run"], tmp_path / "run")
    page = write_report(tmp_path / "r", run=run)
    text = _text(page)
    # No CLIP: the decision CLIP histogram is one line, not an empty axis; the area one (finite values) is drawn.
    assert "Not drawn, no data: Run: CLIP score of candidates by decision" in text
    assert 'alt="decision histogram"' not in text and 'alt="decision area histogram"' in text
    assert "scored best with CLIP" not in text and "No CLIP scores in this run" in text
    # What ran: stages with a record (segment) plus build-pool; the segmenters and options build-pool recorded.
    assert "stages: segment → build-pool" in text
    assert "segmenters: rembg:u2net, grabcut" in text and "no CLIP scoring" in text
    assert ("preset divergen · t 25.0 · d 2.0 · area_min 0.1 · area_max 0.9 · dedup None · real_filter True · "
            "real_min_similarity 0.6 · alpha binary") in text
    # The scored fixture run says CLIP scored and draws both plots.
    scored = _text(write_report(tmp_path / "s", run=inputs["run"]))
    assert "CLIP scored" in scored and "Not drawn" not in scored.split('id="histograms"')[1].split("</section>")[0]
    assert "scored best with CLIP" in scored


def test_augmented_set_from_another_pool_is_flagged(inputs, tmp_path, caplog):
    import json

    aug = json.loads((inputs["augmented"] / "annotations.json").read_text())
    ids = {a["instance_id"] for a in aug["annotations"] if a.get("pasted")}
    assert ids  # the fixture pasted something
    same = _text(write_report(tmp_path / "same", pool=inputs["gt_pool"], augmented=inputs["augmented"]))
    assert "foreign" not in same and "another pool" not in same
    with caplog.at_level("WARNING", logger="xpaste"):
        other = _text(write_report(tmp_path / "other", pool=inputs["pool"], augmented=inputs["augmented"]))
    # None of the pasted ids is in _make_pool's pool (different pixels, so different content hashes).
    line = f"the augmented set was pasted from another pool: {len(ids)} of its {len(ids)} pasted instances"
    assert line in other and other.count('class="warn foreign"') == 2  # summary and gallery
    assert any(line in r.getMessage() for r in caplog.records)

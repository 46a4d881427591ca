"""`xpaste retrieve` through the CLI: from a local folder and from a clip-retrieval k-NN server started here."""
from __future__ import annotations

import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tiny_models import make_tiny_open_clip

from xpaste.cli import main
from xpaste.pool.store import InstancePool


def disc_png(seed: int, size: int = 80) -> bytes:
    r = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = r.integers(0, 200, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return make_tiny_open_clip(folder)


def test_retrieve_from_folder_then_build_pool(clip_model, tmp_path):
    folder = tmp_path / "collection"
    (folder / "sub").mkdir(parents=True)
    for i in range(5):
        (folder / ("sub" if i % 2 else "") / f"img{i}.PNG").write_bytes(disc_png(i))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    run = tmp_path / "run"
    args = ["--run", str(run), "--device", "cpu"]
    assert main(["retrieve", *args, "--categories", "cup,red ball", "--folder", str(folder),
                 "--clip", f"local-dir:{clip_model}", "--per-category", "2"]) == 0
    rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
    assert len(rows) == 4 and {r["source"] for r in rows} == {"folder"}
    assert all((run / r["path"]).is_file() and np.isfinite(r["retrieval_score"]) for r in rows)
    skipped = json.loads((run / "retrieve" / "shard-000000.skipped.json").read_text())
    assert any("broken.jpg" in s["item"] for s in skipped)
    assert main(["segment", *args, "--segmenter", "grabcut"]) == 0
    assert main(["score", *args, "--clip", f"local-dir:{clip_model}"]) == 0
    assert main(["build-pool", *args, "--d", "1000"]) == 0
    pool = InstancePool.open(run / "pool")
    assert len(pool) >= 1 and set(pool.records().column("source").to_pylist()) == {"folder"}


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        results = [{"url": f"{host}/img/{i}.png", "caption": f"cup {i}", "similarity": 0.3 - i / 100, "id": i}
                   for i in range(3)]
        results.append({"url": f"{host}/missing.png", "caption": "gone", "similarity": 0.1, "id": 9})
        data = json.dumps(results).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path.startswith("/img/"):
            data = disc_png(int(self.path.split("/")[-1].split(".")[0]))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self.send_error(404)


def test_retrieve_from_local_knn_service(clip_model, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/knn-service"
        run = tmp_path / "run"
        assert main(["retrieve", "--run", str(run), "--device", "cpu", "--categories", "cup", "--knn-url", url,
                     "--knn-indice", "test-index", "--per-category", "4", "--clip", f"local-dir:{clip_model}"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _Handler.requests[0]["indice_name"] == "test-index" and _Handler.requests[0]["text"] == "a photo of cup"
    rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
    assert len(rows) == 3 and {r["source"] for r in rows} == {"knn"}
    assert all((run / r["path"]).is_file() and r["url"].startswith("http://127.0.0.1") for r in rows)
    skipped = json.loads((run / "retrieve" / "shard-000000.skipped.json").read_text())
    assert len(skipped) == 1 and "missing.png" in skipped[0]["item"]


def test_labelled_folder_without_clip(tmp_path):
    """No CLIP weights at all: a labelled collection, GrabCut, and a pool built without scores."""
    import yaml

    folder = tmp_path / "collection"
    for name, seeds in (("cup", (1, 2)), ("red ball", (3,))):
        (folder / name).mkdir(parents=True)
        for s in seeds:
            (folder / name / f"{s}.png").write_bytes(disc_png(s))
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "categories": {"source": "cup,red ball,dog"},
        "generate": {"enabled": False}, "retrieve": {"enabled": True, "folder": str(folder), "labelled": True},
        "segment": {"segmenters": ["grabcut"]}, "score": {"clip": None}}))
    assert main(["run", str(config)]) == 0
    pool = InstancePool.open(tmp_path / "run" / "pool")
    assert pool.counts() == {1: 2, 2: 1}
    assert all(np.isnan(v) for v in pool.records().column("clip_score").to_pylist())


def test_divergen_filter_against_real_instances(clip_model, tmp_path):
    """build_pool.real_pool: a kept cut-out far from its category's real instances is dropped; categories
    without real instances are left alone."""
    from xpaste.pool.store import InstancePool as Pool

    folder = tmp_path / "collection"
    for name, seeds in (("cup", (1, 2)), ("red ball", (3,))):
        (folder / name).mkdir(parents=True)
        for s in seeds:
            (folder / name / f"{s}.png").write_bytes(disc_png(s))
    real = tmp_path / "real"
    with Pool.create(real, [{"id": 1, "name": "cup"}, {"id": 2, "name": "red ball"}]) as pool:
        rgba = np.zeros((20, 20, 4), np.uint8)
        rgba[..., 0], rgba[5:15, 5:15, 3] = 200, 255
        pool.add(rgba, 1, source="gt")  # real instances for "cup" only
    args = ["--run", str(tmp_path / "run"), "--device", "cpu"]
    assert main(["retrieve", *args, "--categories", "cup,red ball", "--folder", str(folder),
                 "--set", "retrieve.labelled=true"]) == 0
    assert main(["segment", *args, "--segmenter", "grabcut"]) == 0
    assert main(["score", *args, "--clip", f"local-dir:{clip_model}"]) == 0
    decisions = {}
    for threshold in (-1.0, 1.0):  # cosine is in [-1, 1] (the config's range): nothing / all but identical is far
        out = tmp_path / f"pool{threshold}"
        assert main(["build-pool", *args, "--d", "1000", "--area-min", "0", "--area-max", "1", "--out", str(out),
                     "--real-pool", str(real), "--set", f"build_pool.real_min_similarity={threshold}",
                     "--set", "build_pool.dedup=null"]) == 0
        table = pq.read_table(tmp_path / "run" / "build_pool" / "decisions.parquet").to_pylist()
        decisions[threshold] = {(r["category_id"], r["decision"]) for r in table}
        assert all(np.isfinite(r["real_similarity"]) for r in table if r["category_id"] == 1)
    assert decisions[-1.0] == {(1, "kept"), (2, "kept")}
    assert decisions[1.0] == {(1, "far from real instances"), (2, "kept")}


def test_labelled_category_names_cannot_leave_the_collection(tmp_path):
    """Categories named '../secret', by absolute path, or by a symlinked folder copy nothing from outside."""
    coll, secret = tmp_path / "coll", tmp_path / "secret"
    (coll / "cup").mkdir(parents=True)
    secret.mkdir()
    (coll / "cup" / "a.png").write_bytes(disc_png(1))
    (secret / "private.png").write_bytes(disc_png(2))
    os.symlink(secret, coll / "linked")
    for cats in ("cup,../secret", f"cup,{secret}", "cup,linked"):
        run = tmp_path / f"run-{len(cats)}"
        assert main(["retrieve", "--run", str(run), "--categories", cats, "--folder", str(coll),
                     "--set", "retrieve.labelled=true"]) == 0
        rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
        assert [(r["category"], os.path.realpath(r["url"])) for r in rows] == [
            ("cup", os.path.realpath(coll / "cup" / "a.png"))], cats
        copied = sorted(p for p in (run / "images").rglob("*") if p.is_file())
        assert [p.read_bytes() for p in copied] == [disc_png(1)], cats  # the secret image is nowhere in the run


class _MalformedHandler(_Handler):
    """A k-NN reply with malformed entries next to good ones."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        host = f"http://127.0.0.1:{self.server.server_address[1]}"
        results = [{"url": f"{host}/img/1.png", "similarity": 0.3, "id": 1}, 17, None,
                   {"caption": "no url", "id": 2}, {"url": f"{host}/img/2.png", "similarity": "n/a"},
                   {"url": f"{host}/img/3.png", "similarity": 0.2, "id": 3}]
        data = json.dumps(results).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_knn_malformed_results_listed_in_the_skip_log(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MalformedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        run = tmp_path / "run"
        assert main(["retrieve", "--run", str(run), "--categories", "cup", "--knn-url", url,
                     "--knn-indice", "test-index", "--per-category", "6"]) == 0
    finally:
        server.shutdown()
        server.server_close()
    rows = pq.read_table(run / "retrieve" / "shard-000000.parquet").to_pylist()
    assert sorted(r["url"].rsplit("/", 1)[-1] for r in rows) == ["1.png", "3.png"]
    skipped = json.loads((run / "retrieve" / "shard-000000.skipped.json").read_text())
    reasons = sorted(s["reason"] for s in skipped)
    assert len(reasons) == 4 and sum("not an object" in r for r in reasons) == 2, reasons
    assert any("no url" in r for r in reasons) and any("similarity" in r for r in reasons), reasons

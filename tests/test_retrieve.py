"""Stage 1 web images: simple-background filter, folder listing/ranking, and the k-NN client on loopback."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from xpaste.errors import XPasteError
from xpaste.retrieve import (KnnClient, download, is_simple_background, labelled_folder, list_images,
                             most_common_colour, rank_folder, simple_background_fraction)


def _png(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, fmt)
    return out.getvalue()


def _brute_fraction(img: np.ndarray) -> float:
    packed = (img[..., 0].astype(np.uint32) << 16) | (img[..., 1].astype(np.uint32) << 8) | img[..., 2]
    values, counts = np.unique(packed, return_counts=True)
    v = int(values[np.argmax(counts)])
    mode = np.array([v >> 16, (v >> 8) & 255, v & 255])
    return float(np.mean(np.all(np.abs(img.astype(int) - mode) <= 5, axis=-1)))


# --- simple-background filter -------------------------------------------------------------------

def test_disc_on_flat_background_passes_noise_fails():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    img = np.empty((64, 64, 3), np.uint8)
    img[:] = (200, 30, 30)
    img += rng.integers(0, 2, img.shape, dtype=np.uint8)  # JPEG-like jitter stays within +-5 of the mode
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20 ** 2
    img[disc] = rng.integers(0, 256, (disc.sum(), 3), dtype=np.uint8)  # a textured object
    assert simple_background_fraction(img) == pytest.approx(1 - disc.mean())
    assert is_simple_background(img)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert simple_background_fraction(noise) < 0.01 and not is_simple_background(noise)


def test_threshold_example_by_hand():
    # 100 pixels: 25 mode (100,100,100); 15 at (95,105,100) sit on the +-5 boundary (counted);
    # 10 at (106,100,100) and 10 at (100,100,94) are one step outside; 20 black and 20 white are far.
    colours = [(100, 100, 100)] * 25 + [(95, 105, 100)] * 15 + [(106, 100, 100)] * 10 + \
              [(100, 100, 94)] * 10 + [(0, 0, 0)] * 20 + [(255, 255, 255)] * 20
    img = np.array(colours, np.uint8)[np.random.default_rng(1).permutation(100)].reshape(10, 10, 3)
    mode, count = most_common_colour(img)
    assert mode.tolist() == [100, 100, 100] and count == 25
    assert simple_background_fraction(img) == 0.4  # (25 + 15) / 100
    assert is_simple_background(img, 0.4) and not is_simple_background(img, 0.41)


def test_mode_ties_and_exactness():
    img = np.zeros((2, 2, 3), np.uint8)
    img[0] = (10, 0, 0)
    img[1] = (0, 0, 200)  # same count; packed 0x0000c8 < 0x0a0000
    assert most_common_colour(img)[0].tolist() == [0, 0, 200]
    rng = np.random.default_rng(2)
    for i in range(40):  # the pruned histogram search equals the brute force on varied images
        h, w = rng.integers(1, 30, 2)
        img = rng.integers(0, 256 if i % 2 else 6, (h, w, 3), dtype=np.uint8)
        img[rng.random((h, w)) < 0.3] = rng.integers(0, 256, 3)
        assert simple_background_fraction(img) == pytest.approx(_brute_fraction(img), abs=1e-12)
    assert simple_background_fraction(np.zeros((0, 5, 3), np.uint8)) == 0.0
    with pytest.raises(ValueError, match="uint8"):
        simple_background_fraction(np.zeros((4, 4, 3), np.float32))


# --- list_images ---------------------------------------------------------------------------------

def test_list_images_folder_and_list_file(tmp_path):
    root = tmp_path / "imgs"
    for rel in ["a/b.JPG", "a/c.png", "d.Jpeg", "e.webp", "f.BMP", "notes.txt", ".hidden.jpg", ".git/x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    os.symlink(tmp_path / "outside.png", root / "escape.png")  # leaves the folder: skipped
    os.symlink(root / "a" / "c.png", root / "inner.png")  # stays inside: kept
    got = [p.relative_to(root).as_posix() for p in list_images(root)]
    assert got == ["a/b.JPG", "a/c.png", "d.Jpeg", "e.webp", "f.BMP", "inner.png"]

    listing = root / "list.txt"
    listing.write_text("# chosen images\n\na/c.png\n  d.Jpeg  \n")
    assert list_images(listing) == [(root / "a/c.png").resolve(), (root / "d.Jpeg").resolve()]
    listing.write_text("a/c.png\n../outside.png\n")
    with pytest.raises(XPasteError, match="line 2.*outside"):
        list_images(listing)
    with pytest.raises(XPasteError, match="no such folder"):
        list_images(tmp_path / "missing")


# --- rank_folder -----------------------------------------------------------------------------------

class ColourScorer:
    """Embeds an image as its normalised mean colour and 'a photo of red/green/blue' as an axis: scores
    are computable by hand, and every call is recorded."""

    axes = {"red": 0, "green": 1, "blue": 2}

    def __init__(self):
        self.batches = []

    def embed_images(self, images):
        self.batches.append(len(images))
        v = np.array([img.reshape(-1, 3).mean(0) + 1e-6 for img in images], np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_texts(self, texts):
        return np.eye(3, dtype=np.float32)[[self.axes[t.removeprefix("a photo of ")] for t in texts]]


@pytest.fixture
def colour_folder(tmp_path):
    flat = {"red1.png": (250, 0, 0), "red2.png": (250, 0, 0), "green.png": (0, 200, 0),
            "orange.jpg": (200, 100, 0), "sub/blue.png": (0, 0, 90)}
    for rel, colour in flat.items():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(_png(np.full((20, 30, 3), colour, np.uint8), "JPEG" if rel.endswith("jpg")
                                          else "PNG"))
    noisy = np.random.default_rng(0).integers(0, 61, (20, 20, 3), dtype=np.uint8)
    noisy[..., 0] = 255  # strongly red on average (score ~98.6), but no simple background
    (tmp_path / "noisy_red.png").write_bytes(_png(noisy))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path


def test_rank_folder_scores_filters_ties_and_skips(colour_folder):
    paths = list_images(colour_folder)
    scorer = ColourScorer()
    result = rank_folder(paths, ["red", "green", "blue"], scorer, top_k=3, batch_size=3, progress=False)
    assert sum(scorer.batches) == 6 and max(scorer.batches) <= 3  # each readable image embedded once
    assert sorted(os.path.basename(p) for p, _ in result.skipped) == ["corrupt.png", "empty.jpg"]
    assert "empty" in dict(result.skipped)[str(colour_folder / "empty.jpg")]  # the reader says why
    red = result.candidates[0]
    # red1/red2 tie at 100 and are ordered by path; then noisy_red (mean ~(255,30,30): 98.6 > orange's 89.4)
    assert [os.path.basename(c.path) for c in red] == ["red1.png", "red2.png", "noisy_red.png"]
    assert red[0].score == pytest.approx(100.0, abs=1e-3) and red[0].score == red[1].score
    assert (red[0].width, red[0].height, red[0].source, red[0].url) == (30, 20, "folder", "")
    assert [os.path.basename(c.path) for c in result.candidates[2]][0] == "blue.png"

    strict = rank_folder(paths, ["red"], scorer, top_k=10, min_score=80.0, simple_background=0.4,
                         progress=False, urls=[f"http://x/{i}" for i in range(len(paths))])
    names = [os.path.basename(c.path) for c in strict.candidates[0]]
    assert names == ["red1.png", "red2.png", "orange.jpg"]  # noisy red fails the background filter
    assert all(c.score >= 80 and c.background_fraction >= 0.4 for c in strict.candidates[0])
    assert strict.candidates[0][0].url == f"http://x/{paths.index(colour_folder / 'red1.png')}"
    with pytest.raises(ValueError, match="top_k"):
        rank_folder(paths, ["red"], scorer, top_k=0)


def test_rank_folder_with_tiny_open_clip(colour_folder, tmp_path_factory):
    from tiny_models import make_tiny_open_clip

    from xpaste.score import prompt_for
    from xpaste.score.clip import ClipScorer

    scorer = ClipScorer(f"local-dir:{make_tiny_open_clip(tmp_path_factory.mktemp('clip'))}", device="cpu")
    paths = list_images(colour_folder)
    names = ["traffic_light", "cat"]
    result = rank_folder(paths, names, scorer, top_k=2, batch_size=4, progress=False)
    again = rank_folder(paths, names, scorer, top_k=2, batch_size=4, progress=False)
    assert result == again
    assert len(result.skipped) == 2 and {len(v) for v in result.candidates.values()} == {2}
    readable = [p for p in paths if p.name not in ("corrupt.png", "empty.jpg")]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in readable]
    for c, name in enumerate(names):
        expected = scorer.score(images, [prompt_for(name)] * len(images))
        best = np.argsort(-expected, kind="stable")[:2]
        got = result.candidates[c]
        assert [cand.path for cand in got] == [str(readable[i]) for i in best]
        np.testing.assert_allclose([cand.score for cand in got], expected[best], atol=1e-3)


def test_labelled_folder_never_leaves_the_collection(tmp_path):
    """Category names are data: whatever they say, the folder used is strictly inside the collection
    (checked with os.path.realpath / commonpath, not with xpaste's own resolver)."""
    coll, secret = tmp_path / "coll", tmp_path / "secret"
    for d in (coll / "cup", coll / "a b" / "c", secret):
        d.mkdir(parents=True)
    os.symlink(secret, coll / "link-out")  # a folder link leaving the collection
    os.symlink(coll / "cup", coll / "link-in")  # a folder link staying inside
    os.symlink(tmp_path, coll / "cup" / "up")  # a link to a parent, below an ordinary folder
    root = os.path.realpath(coll)

    def inside(p):
        return p is not None and os.path.commonpath([root, os.path.realpath(p)]) == root and \
            os.path.realpath(p) != root

    refused = ["../secret", str(secret), "cup/../../secret", "link-out", "link-out/", "cup/up/secret", "", ".",
               "cup/..", "/", "..", "\0x"]
    for name in refused:
        assert labelled_folder(coll, [name]) is None, name
    assert labelled_folder(coll, ["../secret", "cup"]) == (coll / "cup").resolve()  # falls back to the dir name
    for name, real in [("cup", coll / "cup"), ("a b/c", coll / "a b" / "c"), ("link-in", coll / "cup")]:
        got = labelled_folder(coll, [name])
        assert inside(got) and os.path.realpath(got) == os.path.realpath(real), name
    assert labelled_folder(coll, ["nothing here"]) is None


# --- k-NN client and downloads on a loopback server ---------------------------------------------------

MAX_BYTES = 100_000


class _Server:
    def __init__(self):
        rng = np.random.default_rng(3)
        self.ok = [_png(rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)) for _ in range(2)]
        self.gif = _png(np.full((70, 70, 3), 40, np.uint8), "GIF")
        self.tiny = _png(np.zeros((16, 16, 3), np.uint8))
        self.big = _png(np.zeros((100, 100, 3), np.uint8))  # 10,000 px: over the test's max_pixels
        self.hits: dict[str, int] = {}
        self.knn_requests: list[dict] = []
        self.knn_failures = 0
        self.lock = threading.Lock()

    def results(self, base):
        items = [("ok0.png", "first"), ("flaky.png", "flaky"), ("trunc.png", "truncated"), ("huge.png", "huge"),
                 ("stream.png", "no length"), ("tiny.png", "small"), ("big.png", "pixels"), ("missing.png", "404"),
                 ("down.png", "always 500"), ("redirect", "to file"), ("redirect-ftp", "to ftp"),
                 ("ok1.gif", "gif"), ("ok1.png", "second")]
        out = [{"url": f"{base}/img/{n}", "caption": c, "similarity": 0.3 - i / 100, "id": i}
               for i, (n, c) in enumerate(items)]
        return out + [{"url": "file:///etc/hostname", "caption": "local", "similarity": 0.1, "id": 98},
                      {"caption": "no url", "similarity": 0.05, "id": 99}]


def _handler(state: _Server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, code, body=b"", length=True, headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(0, len(body), 8192):
                    self.wfile.write(body[i:i + 8192])
            except OSError:
                pass  # the client hung up after its size cap: expected

        def do_POST(self):
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.knn_requests.append(payload)
                fail, state.knn_failures = state.knn_failures > 0, max(0, state.knn_failures - 1)
            if self.path != "/knn-service" or fail:
                return self._send(503 if fail else 404, b"{}")
            if payload["indice_name"] != "test-index":
                return self._send(400, b'{"message": "unknown index"}')
            host, port = self.server.server_address
            self._send(200, json.dumps(state.results(f"http://{host}:{port}")).encode())

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            with state.lock:
                n = state.hits[name] = state.hits.get(name, 0) + 1
            if name in ("ok0.png", "ok1.png"):
                return self._send(200, state.ok[int(name[2])])
            if name == "flaky.png":
                return self._send(500) if n <= 2 else self._send(200, state.ok[0])
            if name == "trunc.png":
                return self._send(200, state.ok[1][: len(state.ok[1]) // 2])
            if name in ("huge.png", "stream.png"):  # stream.png omits Content-Length: the read loop must cap
                return self._send(200, b"\0" * (3 * MAX_BYTES), length=name == "huge.png")
            if name in ("tiny.png", "big.png"):
                return self._send(200, state.tiny if name == "tiny.png" else state.big)
            if name == "ok1.gif":
                return self._send(200, state.gif)
            if name == "down.png":
                return self._send(500)
            if name.startswith("redirect"):  # urllib itself refuses file://, our opener also refuses ftp://
                target = "ftp://127.0.0.1/x.png" if name.endswith("ftp") else "file:///etc/hostname"
                return self._send(302, headers=[("Location", target)])
            self._send(404)

    return Handler


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # loopback must never go through a proxy
    state = _Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.base = "http://127.0.0.1:%d" % httpd.server_address[1]
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_knn_query_protocol_and_retries(server):
    server.knn_failures = 1  # the first POST answers 503: retried
    client = KnnClient(server.base, "test-index", timeout=5, retries=2, backoff=0.001)
    assert client.url == server.base + "/knn-service"
    results = client.query("a photo of cat", 13)
    assert len(server.knn_requests) == 2 and server.knn_requests[0] == server.knn_requests[1]
    assert server.knn_requests[0] == {
        "text": "a photo of cat", "image": None, "image_url": None, "modality": "image", "num_images": 13,
        "indice_name": "test-index", "num_result_ids": 13, "use_mclip": False, "deduplicate": True,
        "use_safety_model": False, "use_violence_detector": False, "aesthetic_score": "", "aesthetic_weight": ""}
    assert results[0]["url"].endswith("/img/ok0.png") and results[0]["similarity"] == 0.3

    server.knn_failures = 10  # always 503: exactly 1 + retries attempts, then a clear error
    with pytest.raises(XPasteError, match="HTTP 503"):
        client.query("a photo of cat", 5)
    assert len(server.knn_requests) == 2 + 3
    server.knn_failures = 0
    with pytest.raises(XPasteError, match="HTTP 400"):  # client errors are not retried
        KnnClient(server.base + "/knn-service", "nope", retries=2, backoff=0.001).query("x", 1)
    assert len(server.knn_requests) == 6
    with pytest.raises(XPasteError, match="http"):
        KnnClient("file:///tmp/knn", "test-index")


def test_download_records_failures_and_resumes(server, tmp_path):
    results = KnnClient(server.base, "test-index", backoff=0.001).query("a photo of cat", 20)
    out = tmp_path / "dl"
    opts = dict(max_bytes=MAX_BYTES, timeout=5, min_side=64, max_pixels=9000)
    got = download(results, out, retries=2, backoff=0.001, workers=4, **opts)
    assert [d.url for d in got] == [r.get("url", "") for r in results]
    by_name = {d.url.rsplit("/", 1)[-1]: d for d in got}
    expect_error = {"trunc.png": "not a decodable image", "huge.png": "max_bytes", "stream.png": "max_bytes",
                    "tiny.png": "too small", "big.png": "too many pixels", "missing.png": "http 404",
                    "down.png": "http 500", "redirect": "redirect", "redirect-ftp": "redirect",
                    "hostname": "scheme 'file'", "": "no url"}
    for name, text in expect_error.items():
        assert by_name[name].status.startswith("error: ") and text in by_name[name].status.lower(), by_name[name]
        assert by_name[name].path is None
    assert server.hits["down.png"] == 3 and by_name["down.png"].attempts == 3  # bounded: 1 + retries
    assert server.hits["missing.png"] == 1 and server.hits["trunc.png"] == 1  # permanent: not retried
    assert by_name["flaky.png"].attempts == 3 and by_name["flaky.png"].status == "ok"
    ok = [d for d in got if d.status == "ok"]
    assert sorted(d.url.rsplit("/", 1)[-1] for d in ok) == ["flaky.png", "ok0.png", "ok1.gif", "ok1.png"]
    for d in ok:
        ext = ".png" if d.url.endswith((".png", ".gif")) else ".jpg"
        assert os.path.basename(d.path) == hashlib.sha1(d.url.encode()).hexdigest() + ext
        with Image.open(d.path) as im:
            im.load()
            assert im.size == (d.width, d.height) and min(im.size) >= 64
        assert d.similarity == next(r["similarity"] for r in results if r.get("url") == d.url)
    assert by_name["ok0.png"].caption == "first" and by_name["ok0.png"].bytes == len(server.ok[0])
    assert sorted(p.name for p in out.iterdir()) == sorted(os.path.basename(d.path) for d in ok)  # no temp files

    hits_before = dict(server.hits)
    again = download(results, out, retries=0, workers=1, **opts)
    assert download([by_name["ok0.png"].url], out)[0].path == by_name["ok0.png"].path  # bare URLs work too
    assert [d.path for d in again] == [d.path for d in got]
    assert all(d.attempts == 0 for d in again if d.status == "ok")  # already on disk: not fetched again
    assert server.hits["ok0.png"] == hits_before["ok0.png"]


# --- hostile k-NN servers: slow drips, stalls, malformed replies (loopback, each bounded in time) -----------
class _Hostile:
    """What a hostile server sent before the client hung up, per path."""

    def __init__(self, results: list | None = None):
        self.sent: dict[str, int] = {}
        self.total: dict[str, int] = {}
        self.results = results or []
        self.lock = threading.Lock()


DRIP_BYTES, DRIP_PAUSE = 300, 0.03  # a drip lasts at most 9 s, so a broken client cannot hang the test run


def _hostile_handler(state: _Hostile, good_png: bytes):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):
            pass

        def _drip(self, name: str, data: bytes) -> None:
            """Write one byte at a time, counting what went out until the client hangs up."""
            with state.lock:
                state.total[name] = len(data)
                state.sent[name] = 0
            for i in range(len(data)):
                try:
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                with state.lock:
                    state.sent[name] = i + 1
                time.sleep(DRIP_PAUSE)

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            host, port = self.server.server_address
            body = json.dumps(state.results).replace("{base}", f"http://{host}:{port}").encode()
            if self.path.startswith("/drip"):  # the k-NN reply itself dripped
                return self._drip("knn", b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                                  + b" " * DRIP_BYTES)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            name = self.path.rsplit("/", 1)[-1]
            if name == "drip-body.png":  # headers at once, then a byte at a time
                self.send_response(200)
                self.send_header("Content-Length", str(DRIP_BYTES))
                self.end_headers()
                self.wfile.flush()
                return self._drip(name, good_png[:DRIP_BYTES])
            if name == "drip-headers.png":  # even the header block arrives a byte at a time
                return self._drip(name, b"HTTP/1.0 200 OK\r\nX-Slow: " + b"x" * DRIP_BYTES + b"\r\n\r\n")
            if name == "stall.png":  # headers, then silence for longer than the read timeout
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.flush()
                time.sleep(2)
                return
            if name == "good.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(good_png)))
                self.end_headers()
                self.wfile.write(good_png)
                return
            if name == "garbage.png":
                data = b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_error(404)

    return Handler


@pytest.fixture
def hostile(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    state = _Hostile()
    good = _png(np.random.default_rng(5).integers(0, 256, (70, 80, 3), dtype=np.uint8))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _hostile_handler(state, good))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    state.base = "http://127.0.0.1:%d" % httpd.server_address[1]
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.mark.parametrize("name", ["drip-body.png", "drip-headers.png"])
def test_slow_drip_is_cut_off_at_the_deadline(hostile, tmp_path, name):
    """A server sending a byte every 30 ms never trips a 5 s read timeout; the 0.5 s deadline must end the
    attempt (headers or body), and a deadline overrun is not retried. The server counts what it got out."""
    [d] = download([f"{hostile.base}/img/{name}"], tmp_path, timeout=5, retries=2, backoff=0.001, deadline_s=0.5)
    assert d.status.startswith("error: ") and "deadline" in d.status and d.path is None
    assert d.attempts == 1
    time.sleep(0.2)  # the server notices the hang-up at its next write
    assert 0 < hostile.sent[name] < hostile.total[name] / 2, hostile.sent  # cut off well before the end
    assert list(tmp_path.iterdir()) == []


def test_stalled_read_times_out_and_is_retried(hostile, tmp_path):
    """No byte for longer than `timeout`: a transient failure (retried), far inside the deadline."""
    [d] = download([f"{hostile.base}/img/stall.png"], tmp_path, timeout=0.3, retries=1, backoff=0.001,
                   deadline_s=60)
    assert d.status.startswith("error: ") and "timed out" in d.status.lower() and d.attempts == 2


def test_knn_reply_dripped_is_cut_off(hostile):
    """The k-NN reply itself dripped (a byte per 30 ms, under the 0.1 s read timeout): cut off at the deadline."""
    hostile.results = [{"url": "{base}/img/good.png", "similarity": 0.2}]
    client = KnnClient(hostile.base + "/drip", "idx", timeout=0.1, retries=0)  # deadline: 30 x timeout = 3 s
    with pytest.raises(XPasteError, match="deadline"):
        client.query("a cup", 1)
    time.sleep(0.2)
    assert hostile.sent["knn"] < hostile.total["knn"] / 2


def test_malformed_results_are_listed_and_skipped(hostile, tmp_path):
    """Every entry of a k-NN reply gets a record; only the good one is fetched and stored."""
    hostile.results = [
        {"url": "{base}/img/good.png", "caption": "fine", "similarity": 0.31, "id": 1},
        42, None, ["{base}/img/good.png"], "not a url",
        {"caption": "no url", "similarity": 0.2},
        {"url": None, "similarity": 0.2},
        {"url": 7, "similarity": 0.2},
        {"url": "{base}/img/good.png?2", "similarity": "high"},
        {"url": "{base}/img/good.png?3", "similarity": float("nan")},  # json.dumps writes NaN; json.loads reads it
        {"url": "{base}/img/good.png?4", "similarity": True},
        {"url": "{base}/img/garbage.png", "similarity": 0.1},
    ]
    results = KnnClient(hostile.base, "idx", retries=0).query("a cup", 12)
    assert len(results) == 12
    got = download(results, tmp_path / "dl", retries=0, workers=3, timeout=5, min_side=16)
    assert len(got) == 12
    assert [d.status for d in got][0] == "ok" and got[0].caption == "fine" and got[0].similarity == 0.31
    reasons = [d.status for d in got[1:]]
    assert all(r.startswith("error: ") for r in reasons), reasons
    expected = ["not an object", "not an object", "not an object", "scheme", "no url", "no url", "url is a int",
                "similarity 'high'", "similarity nan", "similarity true", "not a decodable image"]
    assert [e in r.lower() for e, r in zip(expected, reasons)] == [True] * 11, reasons
    stored = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert stored == [hashlib.sha1(results[0]["url"].encode()).hexdigest() + ".png"]


def test_https_reads_whole_images_and_cuts_drips(tmp_path, monkeypatch):
    """The deadline wrapper sits on the TLS socket too: a whole image over https, a dripping one cut off."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throw-away certificate")
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the default https context trusts our certificate
    state = _Hostile()
    good = _png(np.random.default_rng(6).integers(0, 256, (200, 220, 3), dtype=np.uint8))  # > one TLS record
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _hostile_handler(state, good))
    httpd.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        base = "https://127.0.0.1:%d/img/" % httpd.server_address[1]
        ok, drip = download([base + "good.png", base + "drip-body.png"], tmp_path / "dl", retries=0, workers=1,
                            timeout=5, deadline_s=0.5)
        time.sleep(0.2)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    assert ok.status == "ok" and ok.bytes == len(good) and (ok.width, ok.height) == (220, 200)
    assert Image.open(ok.path).tobytes() == Image.open(io.BytesIO(good)).tobytes()  # PIL: the same pixels
    assert "deadline" in drip.status and state.sent["drip-body.png"] < DRIP_BYTES / 2

"""Model loads that cannot reach their download host fail in one line within seconds (xpaste.hub).

The network is made unreachable inside each test, two ways: every HTTPS connection goes through a proxy at a
loopback port that refuses connections (a socket opened, its port taken, then closed), so the probe fails at
once and even a download that slipped past the check could not succeed; and `HF_HUB_OFFLINE=1`. Nothing is
downloaded. Oracle for "fast": `time.monotonic()` around the constructor (the backend's library already
imported: that one-time cost is not the hub's), bounded generously for a loaded CI machine. With the weights
on disk (a local folder, the Hugging Face cache, rembg's home) the same loads work.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import uuid

import pytest
from tiny_models import build_tiny_sd, export_tiny_u2net, make_tiny_clipseg, make_tiny_open_clip

from xpaste import hub
from xpaste.errors import XPasteError

BOUND_S = 15.0  # the probe takes well under a second here; the rest is slack for a loaded machine


def refused_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def network_down(monkeypatch, mode: str = "unreachable") -> None:
    """All HTTPS (and HTTP) through a proxy at a refusing loopback port; with mode "HF_HUB_OFFLINE" also
    HF_HUB_OFFLINE=1. Even a download that escaped the check would go nowhere."""
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy", "HF_ENDPOINT",
                "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    port = refused_port()
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    if mode == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub.reset_probes()


@pytest.fixture(params=["unreachable", "HF_HUB_OFFLINE"])
def offline(request, monkeypatch) -> str:
    """The network is down for this test, each of the two ways."""
    network_down(monkeypatch, request.param)
    yield request.param
    hub.reset_probes()


def fails_fast(build, *needles: str) -> str:
    start = time.monotonic()
    with pytest.raises(XPasteError) as err:
        build()
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert elapsed < BOUND_S, f"took {elapsed:.1f} s: {message}"
    assert "\n" not in message and not message.endswith(("...", "…"))
    for needle in needles:
        assert needle in message, message
    return message


def reason_of(mode: str) -> str:
    return "HF_HUB_OFFLINE=1" if mode == "HF_HUB_OFFLINE" else "unreachable through the proxy 127.0.0.1"


# --- the helper itself ----------------------------------------------------------------------------------

def test_probe_is_bounded_cached_and_honours_offline(monkeypatch):
    hub.reset_probes()
    port = refused_port()
    start = time.monotonic()
    assert hub.probe("127.0.0.1", port) is not None
    assert not hub.host_reachable("127.0.0.1", port)  # cached: the same answer, no second probe
    assert time.monotonic() - start < BOUND_S
    with socket.socket() as server:  # a listening port is reachable
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub.host_reachable("127.0.0.1", server.getsockname()[1])
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv(var, "1")
        assert hub.unreachable_reason() == f"{var}=1 is set (offline mode)"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    assert hub.unreachable_reason().startswith(f"127.0.0.1:{port} is unreachable")
    hub.reset_probes()


def test_a_hanging_probe_is_cut_at_its_timeout(monkeypatch):
    """A blackholed host or a dead DNS server (getaddrinfo has no timeout) costs the probe's bound, no more."""
    def hang(*args, **kwargs):
        time.sleep(5)
        raise OSError("never answered")

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    start = time.monotonic()
    assert hub.probe("xpaste-blackhole.invalid", 443, timeout=0.3) == "no answer within 0.3 s"
    assert time.monotonic() - start < 3
    hub.reset_probes()


def test_first_line_never_cuts_a_word():
    assert hub.first_line(ValueError("one\ntwo")) == "one"
    cut = hub.first_line("word " * 200, limit=50)
    assert cut.endswith(" ...") and len(cut) <= 54 and all(w == "word" for w in cut[:-4].split())


# --- each backend, by hub id, with the network down -------------------------------------------------------

def test_clipseg_hub_id_fails_fast(offline):
    import xpaste.segment.clipseg  # noqa: F401 - the backend's imports (torch, transformers) are not timed
    from xpaste.segment import build_segmenter

    fails_fast(lambda: build_segmenter("clipseg", device="cpu"), "'CIDAS/clipseg-rd64-refined'",
               reason_of(offline), "not in the local cache", "--segmenter clipseg:/path/to/folder")


def test_diffusers_hub_id_fails_fast(offline):
    import xpaste.generate.diffusers_t2i  # noqa: F401 - the backend's imports are not timed
    from xpaste.generate import build_generator

    fails_fast(lambda: build_generator(model="stable-diffusion-v1-5/stable-diffusion-v1-5", device="cpu"),
               "'stable-diffusion-v1-5/stable-diffusion-v1-5'", reason_of(offline), "--model /path/to/folder")


def test_open_clip_fails_fast_without_a_stray_log_line(offline, capfd):
    import logging

    from xpaste.score.clip import ClipScorer

    handlers = list(logging.getLogger().handlers)
    fails_fast(lambda: ClipScorer("ViT-L-14", "openai", device="cpu"), "ViT-L-14 (openai)",
               reason_of(offline), "--clip local-dir:/path/to/folder")
    fails_fast(lambda: ClipScorer("hf-hub:xpaste/nonexistent-clip", device="cpu"), "hf-hub:xpaste/nonexistent-clip",
               reason_of(offline), "--clip local-dir:")
    out, err = capfd.readouterr()
    assert "ERROR" not in out + err
    assert logging.getLogger().handlers == handlers  # no logging.basicConfig() as a side effect


def test_rembg_missing_file_fails_fast(offline):
    import rembg  # noqa: F401 - its import (numba, onnxruntime) is not timed
    from xpaste.segment import build_segmenter

    host = "HF_HUB_OFFLINE=1" if offline == "HF_HUB_OFFLINE" else "github.com:443 is unreachable"
    message = fails_fast(lambda: build_segmenter("rembg:u2netp"), "'u2netp'", host,
                         os.path.join("models", "u2netp", "u2netp.onnx"), "--segmenter rembg:/path/to/model.onnx")
    assert "REMBG_HOME" in message


# --- with the weights on disk, the same loads work offline --------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"clipseg": make_tiny_clipseg(str(root / "clipseg")), "sd": build_tiny_sd(root / "sd"),
            "clip": make_tiny_open_clip(root)}


def test_local_folders_load_offline(offline, tiny):
    from xpaste.generate import build_generator
    from xpaste.score.clip import ClipScorer
    from xpaste.segment import build_segmenter

    assert build_segmenter(f"clipseg:{tiny['clipseg']}", device="cpu").name.startswith("clipseg:")
    assert build_generator(model=tiny["sd"], device="cpu", steps=1, height=64, width=64).pipe is not None
    assert ClipScorer(f"local-dir:{tiny['clip']}", device="cpu").name.startswith("clip:local-dir:")


@pytest.fixture
def cached_repo():
    """Put a folder into the Hugging Face cache as the snapshot of a made-up repo (what a download leaves)."""
    from huggingface_hub import constants

    made = []

    def put(folder: str) -> str:
        repo = f"xpaste-test/tiny-{uuid.uuid4().hex[:8]}"
        base = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        commit = "0" * 40
        shutil.copytree(folder, os.path.join(base, "snapshots", commit))
        os.makedirs(os.path.join(base, "refs"), exist_ok=True)
        with open(os.path.join(base, "refs", "main"), "w") as f:
            f.write(commit)
        made.append(base)
        return repo

    yield put
    for base in made:
        shutil.rmtree(base, ignore_errors=True)


def test_cached_hub_ids_load_offline(offline, tiny, cached_repo):
    from xpaste.generate import build_generator
    from xpaste.score.clip import ClipScorer
    from xpaste.segment import build_segmenter

    start = time.monotonic()
    repo = cached_repo(tiny["clipseg"])
    assert build_segmenter(f"clipseg:{repo}", device="cpu").model is not None
    repo = cached_repo(tiny["sd"])
    assert build_generator(model=repo, device="cpu", steps=1, height=64, width=64).pipe is not None
    repo = cached_repo(tiny["clip"])
    assert ClipScorer(f"hf-hub:{repo}", device="cpu").embed_texts(["a cup"]).shape == (1, 32)
    assert time.monotonic() - start < 2 * BOUND_S


def test_rembg_file_in_its_home_loads_offline(offline):
    from rembg.sessions.u2net import U2netSession

    from xpaste.segment import build_segmenter

    target = os.path.join(U2netSession.model_dir(), "u2net.onnx")  # REMBG_HOME is a temp dir (conftest)
    if not os.path.isfile(target):
        export_tiny_u2net(target)
    assert build_segmenter("rembg:u2net").name == "rembg:u2net"


# --- the command line: one line, exit 2, in seconds ----------------------------------------------------------

@pytest.mark.parametrize("workers", [1, 2])
def test_cli_segment_with_clipseg_hub_id_fails_fast(monkeypatch, tmp_path, capfd, workers):
    import numpy as np
    import xpaste.segment.clipseg  # noqa: F401 - the backend's imports are not timed
    from PIL import Image

    from xpaste.cli import main

    cup = tmp_path / "collection" / "cup"
    cup.mkdir(parents=True)
    img = np.full((48, 48, 3), 255, np.uint8)
    img[12:36, 12:36] = (200, 30, 30)
    Image.fromarray(img).save(cup / "a.png")
    args = ["--run", str(tmp_path / "run"), "--device", "cpu"]
    assert main(["retrieve", *args, "--categories", "cup", "--folder", str(tmp_path / "collection"),
                 "--labelled"]) == 0
    capfd.readouterr()
    network_down(monkeypatch)
    start = time.monotonic()
    # with 2 workers the model fails in a forked worker: the driver stops with its line, no pool restarts
    assert main(["segment", *args, "--segmenter", "clipseg", "--workers", str(workers)]) == 2
    elapsed = time.monotonic() - start
    out, err = capfd.readouterr()
    # a progress bar may be drawn and then erased (\r) on the way: only printed lines count
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert elapsed < BOUND_S, err
    assert "Traceback" not in err and "worker process" not in err, err
    assert len(lines) == 1 and lines[0].startswith("xpaste: error: could not load CLIPSeg model"), err
    assert "'CIDAS/clipseg-rd64-refined'" in lines[0] and "--segmenter clipseg:/path/to/folder" in lines[0]


@pytest.mark.parametrize("flags, needles", [
    (["--model", "stable-diffusion-v1-5/stable-diffusion-v1-5"], ["text-to-image model", "--model /path/to/folder"]),
    (["--clip", "ViT-L-14", "--pretrained", "openai"], ["CLIP model ViT-L-14 (openai)", "--clip local-dir:"]),
    (["--segmenter", "clipseg"], ["CLIPSeg model", "--segmenter clipseg:/path/to/folder"]),
    (["--segmenter", "rembg:u2netp"], ["rembg model 'u2netp'", "--segmenter rembg:/path/to/model.onnx"]),
])
def test_demo_with_hub_models_ends_in_one_line(monkeypatch, tmp_path, capfd, flags, needles):
    from xpaste.demo import main

    network_down(monkeypatch)
    start = time.monotonic()
    assert main(["--out", str(tmp_path / "demo"), *flags]) == 2
    elapsed = time.monotonic() - start
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("xpaste demo: error: could not load"), out + err
    assert all(n in lines[0] for n in needles), lines[0]
    assert elapsed < BOUND_S + 10  # the first of these also imports its backend's library
    assert not (tmp_path / "demo").exists()  # checked before anything is built

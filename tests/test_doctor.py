"""`xpaste doctor`: every configured model loaded through its stage's backend code, one small image through each,
one table row per model; a hub id offline fails in its row's one line while the others still run (exit 2).

Oracles: tiny random models built offline (`tests/tiny_models.py`), whose loading and output the backends' own
tests check; the table read back as text; sizes worked out by hand from the models' configs."""
from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_models import (
    build_tiny_sd,
    export_tiny_u2net,
    make_tiny_clipseg,
    make_tiny_open_clip,
)

from xpaste.cli import main
from xpaste.doctor import HEADER, Target, generator_size, targets_from

ROW = re.compile(r"^(generate|segment|clip)\s+(\S+)\s+(\S+(?: fp\d\d| bf16)?)\s+(\S+)\s+(\S+)\s+(.*?)\s{2,}(ok|failed: .*)$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor_models")
    return {"sd": build_tiny_sd(root / "sd"), "clipseg": make_tiny_clipseg(str(root / "clipseg")),
            "clip": make_tiny_open_clip(root), "onnx": export_tiny_u2net(str(root / "u2net_tiny.onnx"))}


def _table(out: str) -> tuple[list[tuple], str]:
    """The rows of the printed table (each regex group) and the summary line."""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["kind", "spec", "device", "load", "s", "s/image", "ran", "status"], lines[0]
    rows = []
    for line in lines[1:-1]:
        found = ROW.match(line)
        assert found, line
        rows.append(found.groups())
    return rows, lines[-1]


def test_tiny_models_all_load_and_run(tiny, capsys):
    args = ["doctor", "--model", tiny["sd"], "--segmenter", "grabcut", "--segmenter", f"rembg:{tiny['onnx']}",
            "--segmenter", f"clipseg:{tiny['clipseg']}", "--clip", f"local-dir:{tiny['clip']}", "--device", "cpu",
            "--repeat", "1"]
    assert main(args) == 0
    rows, last = _table(capsys.readouterr().out)
    assert [(r[0], r[1]) for r in rows] == [
        ("generate", tiny["sd"]), ("segment", "grabcut"), ("segment", f"rembg:{tiny['onnx']}"),
        ("segment", f"clipseg:{tiny['clipseg']}"), ("clip", f"local-dir:{tiny['clip']}")]
    for kind, spec, device, load_s, per_image_s, ran, status in rows:
        assert status == "ok", (spec, status)
        assert device.startswith("cpu"), device  # --device cpu; segmenters pick theirs: no GPU here
        assert float(load_s) >= 0 and float(per_image_s) > 0
    assert rows[0][2] == "cpu fp32" and rows[0][5] == "64x64, 1 step"  # the tiny SD: 64 px, its smallest
    assert [r[5] for r in rows[1:]] == ["64x64"] * 4
    assert last == "all 5 models loaded and ran: the pipeline is ready"


def test_an_offline_hub_id_fails_in_its_row_and_the_others_still_run(tiny, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["doctor", "--model", "xpaste-tests/no-such-pipeline", "--model", tiny["sd"], "--segmenter",
            "clipseg:xpaste-tests/no-such-clipseg", "--segmenter", "grabcut", "--clip", f"local-dir:{tiny['clip']}",
            "--device", "cpu", "--repeat", "1"]
    assert main(args) == 2
    captured = capsys.readouterr()
    rows, last = _table(captured.out)
    status = {r[1]: r[6] for r in rows}
    assert len(rows) == 5  # one line each: the failures too
    assert status[tiny["sd"]] == status["grabcut"] == status[f"local-dir:{tiny['clip']}"] == "ok"
    for spec, flag in (("xpaste-tests/no-such-pipeline", "--model /path/to/folder"),
                       ("clipseg:xpaste-tests/no-such-clipseg", "--segmenter clipseg:/path/to/folder")):
        assert status[spec].startswith("failed: could not load"), status[spec]
        assert "HF_HUB_OFFLINE=1" in status[spec] and flag in status[spec]  # the stages' own line
    failed = next(r for r in rows if r[1] == "xpaste-tests/no-such-pipeline")
    assert failed[2:6] == ("-", "-", "-", "-")
    assert last.startswith("2 of 5 models failed: generate xpaste-tests/no-such-pipeline, segment clipseg:")
    assert "Traceback" not in captured.err


def test_a_backend_that_crashes_or_answers_wrong_is_a_failed_row(capsys, monkeypatch):
    import xpaste.segment

    class Wrong:
        name = "wrong"

        def segment(self, images, prompts):
            return [np.zeros((3, 3), np.uint8)]

    class Crash:
        name = "crash"

        def segment(self, images, prompts):
            raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    built = iter([Wrong(), Crash()])
    monkeypatch.setattr(xpaste.segment, "build_segmenter", lambda spec, **kw: next(built))
    assert main(["doctor", "--segmenter", "grabcut", "--segmenter", "grabcut:3", "--repeat", "1"]) == 2
    rows, _ = _table(capsys.readouterr().out)
    assert rows[0][6] == "failed: returned [(3, 3) uint8], expected one (64, 64) uint8 mask"
    assert rows[1][6] == "failed: RuntimeError: CUDA out of memory."


def test_what_is_checked_comes_from_the_flags_the_config_or_the_defaults(tmp_path):
    default, device = targets_from()  # the pipeline's defaults
    assert [(t.kind, t.spec) for t in default] == [
        ("generate", "stable-diffusion-v1-5/stable-diffusion-v1-5"), ("segment", "grabcut"),
        ("segment", "rembg:u2net"), ("segment", "clipseg"), ("clip", "ViT-L-14")]
    assert default[-1].options == {"pretrained": "openai"} and device is None
    assert default[0].options["scheduler"] == "dpm"
    only, _ = targets_from(segmenters=["grabcut"])  # without --config: only the kinds given
    assert [(t.kind, t.spec) for t in only] == [("segment", "grabcut")]
    config = tmp_path / "pipeline.yaml"
    config.write_text("device: cpu\ngenerate:\n  models: [/m/sd]\n  guidance: 2.0\nsegment:\n  segmenters: [grabcut]\n"
                      "score:\n  clip: local-dir:/m/clip\n")
    targets, device = targets_from(config)
    assert [(t.kind, t.spec) for t in targets] == [("generate", "/m/sd"), ("segment", "grabcut"),
                                                   ("clip", "local-dir:/m/clip")]
    assert device == "cpu" and targets[0].options["guidance"] == 2.0
    targets, device = targets_from(config, segmenters=["rembg:u2net"], device="cuda:1")  # a flag replaces its key
    assert [(t.kind, t.spec) for t in targets] == [("generate", "/m/sd"), ("segment", "rembg:u2net"),
                                                   ("clip", "local-dir:/m/clip")]
    assert device == "cuda:1"
    config.write_text("generate:\n  enabled: false\nsegment:\n  segmenters: [grabcut]\nscore:\n  clip: null\n")
    assert [(t.kind, t.spec) for t in targets_from(config)[0]] == [("segment", "grabcut")]


def test_a_bad_flag_is_refused_in_one_line_before_anything_loads(capsys):
    assert main(["doctor", "--segmenter", "nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown segmenter 'nosuch'" in err[0]


def test_the_generator_runs_at_the_smallest_size_its_model_takes():
    def pipe(scale, levels=None, patch=None):
        unet = SimpleNamespace(config=SimpleNamespace(block_out_channels=(1,) * levels)) if levels else None
        transformer = SimpleNamespace(config=SimpleNamespace(patch_size=patch)) if patch else None
        return SimpleNamespace(vae_scale_factor=scale, unet=unet, transformer=transformer)

    assert generator_size(pipe(8, levels=4)) == 64  # SD 1.x/2.x: VAE 8 x three UNet downsamplings
    assert generator_size(pipe(8, levels=3)) == 64  # SDXL: step 32, at least 64
    assert generator_size(pipe(8, patch=2)) == 64  # SD 3 / FLUX: step 16
    assert generator_size(pipe(2, levels=2)) == 64  # the tiny test SD: step 4 -> a multiple of 8
    assert generator_size(pipe(8, levels=5)) == 128  # step 128 > 64
    assert generator_size(pipe(3, levels=1)) == 72  # step lcm(3, 8) = 24


def test_the_table_header_names_every_column():
    assert HEADER == ("kind", "spec", "device", "load s", "s/image", "ran", "status")
    assert Target("segment", "grabcut").options == {}

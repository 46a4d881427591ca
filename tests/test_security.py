"""Security rules checked over the source and the data paths: no path from data escapes its root, weights and
configs load without code execution, no shell is built from data."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xpaste.errors import XPasteError
from xpaste.io import resolve_inside, safe_name

SRC = Path(__file__).resolve().parents[1] / "src" / "xpaste"
FORBIDDEN = {
    r"\byaml\.load\(": "use yaml.safe_load",
    r"\bpickle\.loads?\(": "never unpickle data",
    r"shell\s*=\s*True": "no shell built from data",
    r"\bos\.system\(": "no shell built from data",
    r"(?<![.\w])eval\(|(?<![.\w])exec\(": "no code from data",
    r"torch\.load\((?![^)]*weights_only\s*=\s*True)": "torch.load needs weights_only=True",
}


def test_source_has_no_unsafe_calls():
    problems = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern, why in FORBIDDEN.items():
            for m in re.finditer(pattern, text):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{path.relative_to(SRC)}:{line}: {why}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/passwd", "a/\x00b", "..", "sub/../../etc"])
def test_resolve_inside_refuses_escapes(tmp_path, rel):
    with pytest.raises(XPasteError):
        resolve_inside(tmp_path, rel)


def test_resolve_inside_refuses_symlinks_out(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(XPasteError, match="outside"):
        resolve_inside(tmp_path / "root", "link/secret")
    assert resolve_inside(tmp_path / "root", "a/b/../c") == (tmp_path / "root" / "a" / "c").resolve()


@pytest.mark.parametrize("name", ["a/b", "..", "../../etc", "nul\x00", "ü" * 300, "con", " .hidden", "a\\b", ""])
def test_safe_name_is_a_single_harmless_component(name):
    out = safe_name(name)
    assert out and "/" not in out and "\\" not in out and "\x00" not in out and out not in (".", "..")
    assert not out.startswith(".") and len(out) <= 80


def test_pipeline_outputs_cannot_be_redirected_by_data(tmp_path):
    from xpaste.pipeline.rundir import save_png
    import numpy as np

    with pytest.raises(XPasteError):
        save_png(tmp_path, "../outside.png", np.zeros((2, 2, 3), np.uint8))
    assert not (tmp_path.parent / "outside.png").exists()

"""`make demo` end to end (the same code path, into a temp folder): dataset, pipeline, pool, augment, report."""
from __future__ import annotations

import json

from xpaste.demo import main as demo_main
from xpaste.pool.store import InstancePool


def test_demo_runs_offline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--copies", "1", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and "total" in printed
    html = (out / "report" / "index.html").read_text()
    for section in ("summary", "contact-sheets", "histograms", "segmenters", "coverage", "gallery"):
        assert f'id="{section}"' in html
    assert "CLIP scores unavailable" in html
    pool = InstancePool.open(out / "run" / "pool")
    sources = set(pool.records().column("source").to_pylist())
    assert sources == {"folder", "gt"} and len(pool.counts()) == 6
    doc = json.loads((out / "augmented" / "annotations.json").read_text())
    assert len(doc["images"]) == 9 and any(a["pasted"] for a in doc["annotations"])

"""`benchmarks/effect.py --quick` runs end to end: task, pool through xpaste's stages, three detector trainings
(baseline, uniform pool, planned round through the real `xpaste eval` / `xpaste plan` commands), LVIS evaluation,
the json it promises (every arm, both IoU types, finite figures), and a rerun reuses the finished runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "effect.py"


def test_effect_benchmark_quick(tmp_path):
    out = tmp_path / "effect.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "work"), "--json", str(out)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["arms"]) == {"baseline", "xpaste", "planned"}
    for arm in ("baseline", "xpaste", "planned"):
        assert set(report["arms"][arm]) == {"segm", "bbox"}
        for iou in ("segm", "bbox"):
            rows = report["arms"][arm][iou]
            assert [r["seed"] for r in rows] == [0]
            for r in rows:
                for key in ("AP", "APr", "APc", "APf"):
                    assert isinstance(r[key], float) and math.isfinite(r[key]), (arm, iou, key, r[key])
    # the xpaste arm really pasted pool instances and the pool holds every category
    runs = {r["arm"]: r for r in report["runs"]}
    assert runs["xpaste"]["pasted"] > 0 and runs["baseline"]["pasted"] == 0 and runs["planned"]["pasted"] > 0
    assert all(c["pool_instances"] > 0 for c in report["task"]["categories"])
    assert "segm AP" in proc.stdout and "xpaste eval --compare" in proc.stdout
    # the planned round: a real plan file spending exactly the uniform round's generation budget
    rnd = report["planned_rounds"]["0"]
    plan = json.loads(Path(rnd["plan"]).read_text())
    budget = report["schedule"]["generation_budget"]
    assert plan["budget"] == budget == sum(rnd["generate"].values())
    assert sum(rnd["pool_instances"].values()) > 0

    # a rerun reuses every finished run (nothing is trained again)
    again = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reused the finished run") == 3

"""Longer soak runs, behind the `slow` marker (`make soak`; not part of `make test`): many more SIGKILLs of
augment and build-pool, and the fuzzers with 20x more examples. `make soak` also runs the slow version of the
CLI input fuzz (tests/test_fuzz_cli.py::test_fuzz_cli_inputs_soak: XPASTE_FUZZ_CLI_CASES mutations per command,
400 by default, seed XPASTE_FUZZ_CLI_SEED)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_crash_safety import augment_kill_cycle, build_pool_kill_cycle

pytestmark = pytest.mark.slow
SOAK_KILLS = int(os.environ.get("XPASTE_SOAK_KILLS", "25"))


@pytest.mark.parametrize("seed", [10, 11])
def test_augment_kill_soak(tmp_path, seed):
    augment_kill_cycle(tmp_path, SOAK_KILLS, seed)


@pytest.mark.parametrize("seed", [20, 21])
def test_build_pool_kill_soak(tmp_path, seed):
    build_pool_kill_cycle(tmp_path, SOAK_KILLS, seed)


def test_fuzz_soak():
    tests = Path(__file__).parent / "test_fuzz.py"
    env = dict(os.environ, XPASTE_FUZZ_EXAMPLES=os.environ.get("XPASTE_FUZZ_EXAMPLES", "6000"))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:]

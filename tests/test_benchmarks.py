"""Every benchmark script runs (``--quick`` smoke sizes) and writes its JSON: a benchmark that
no longer runs is found by CI, not by the next person who wants the numbers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "macro_j2": ["--quick", "--ranks", "1"],
    "rve": ["--quick", "--device", "cpu", "--fft-grids", "4", "--fft-steps", "2"],
    "surrogate": ["--quick", "--repeat", "1", "--taylor-grains", "4", "--fft-grid", "4"],
    "fe2_speedup": ["--quick", "--grid", "4", "--grains", "2"],
    "generate": ["--quick", "--ranks", "1"],
    "training": ["--quick"],
    "training_odd": ["--quick", "--recipe", "odd"],
    "checkpoint": ["--quick", "--ranks", "1"],
    "strain_paths": ["--quick", "--ranks", "1"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_benchmark_quick_run_writes_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    script = REPO / "benchmarks" / f"{name.split('_odd')[0]}.py"
    r = subprocess.run([sys.executable, str(script), *CASES[name], "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data, f"{name}: empty JSON"
    assert r.stdout.strip(), f"{name}: printed no table"

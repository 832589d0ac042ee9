"""benchmarks/bench_vs_upstream.py on tiny sizes, our side alone (no upstream checkout given)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import tiny_params

REPO = Path(__file__).resolve().parents[1]


def test_json_keys_our_side_alone(tmp_path):
    params = tiny_params()
    params["train"].pop("deterministic")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_vs_upstream.py"), "--params",
                          str(tmp_path / "tiny.yaml"), "--steps", "1", "--batch-size", "2", "--threads", "1"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["ours_samples_per_s"] > 0 and result["ours_peak_memory_mb"] > 0
    assert result["upstream_samples_per_s"] is None and result["ratio"] is None
    assert result["upstream_peak_memory_mb"] is None and result["upstream_patches"] is None
    assert {"g_forward", "g_losses", "d_forward", "g_backward", "d_backward", "optimizer"} <= set(
        result["ours_phase_seconds"])

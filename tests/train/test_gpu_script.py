"""``benchmarks/gpu.sh --tiny``: the GPU benchmark's code on the CPU at dry-run size, so the
script is known to run before anyone rents a GPU for it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_gpu_script_runs_tiny_on_cpu():
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--tiny", "--only", "scale"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in (
        "| none |",
        "| sdpa-elementwise compiled |",
        "| sdpa-headwise |",
        "| transformers |",
    ):
        assert row in proc.stdout
    assert "gpu-125m step: sdpa-elementwise / none" in proc.stdout
    assert "MFU" in proc.stdout

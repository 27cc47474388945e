"""The GPU checks still run: ``benchmarks/gpu_checks.py --device cpu --quick`` end to end.

No GPU is lent to CI, so the harness runs on the CPU (gloo instead of NCCL, a tiny model): every
check and table is printed, DDP in one process equals the plain model, and vectors embedded
twice on the same device give the same neighbours. No timing is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_checks.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_the_gpu_checks_run_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=HANG_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    for heading in ("## bf16 training step", "## DDP in one process"):
        assert heading in completed.stdout, completed.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["peak_bf16_tflops"] is None
    assert [row["batch"] for row in report["train"]] == [1, 2]
    assert all(row["flops_per_step"] > 0 and row["step_s"] > 0 for row in report["train"])
    assert report["ddp"]["backend"] == "gloo" and report["ddp"]["equal"] is True
    assert report["faiss"]["top10_overlap"] == 1.0

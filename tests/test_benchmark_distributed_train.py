"""The distributed training benchmark still runs: ``benchmarks/distributed_train.py --quick``
end to end (a tiny model; 1 process on all cores, on one thread, and 2 processes under
torchrun with gloo). No timing is checked: only that every table is printed, that the three
runs computed the same losses, and that the JSON holds the communication figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "distributed_train.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [sys.executable, str(SCRIPT), "--quick", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    for heading in (
        "# Distributed training benchmark (--quick",
        "## Throughput, same global batch",
        "## Communication per step",
        "## Projection (not measured)",
        "| 25 Gb/s Ethernet |",
    ):
        assert heading in report, f"{heading!r} missing from:\n{report}"

    results = json.loads(out.read_text())
    rows = results["rows"]
    assert [(r["processes"], r["threads_per_process"] if r["processes"] == 2 else None)
            for r in rows] == [(1, None), (1, None), (2, 1)]  # fmt: skip
    assert rows[1]["threads_per_process"] == 1
    for row in rows:
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["median_cpu_s"] > 0
        assert row["losses"] == pytest.approx(rows[0]["losses"], rel=1e-5)  # the same steps
        assert row["gradient_bytes"] == row["parameters"] * 4
    ddp = rows[2]
    assert sum(ddp["ddp_buckets_bytes"]) == ddp["gradient_bytes"] and ddp["allreduce_s"] > 0
    projected = results["projection"]["seconds"]["100 Gb/s Ethernet"]
    assert projected["8"] == pytest.approx(2 * 7 / 8 * ddp["gradient_bytes"] / 12.5e9)

"""The quality benchmark still runs: ``benchmarks/quality.py --quick --seeds 2`` end to end.

Six stdlib files, 20 steps of each run, the hashing embedder instead of MiniLM (to keep it to
a minute): the sweep (retrieval on and off, two seeds) through ``retro-platform run``, the
figures read back from MLflow, the medians, the leakage table and the copy ceiling from the
first seed's checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "quality.py"


@pytest.mark.slow
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--seeds",
        "2",
        "--results",
        str(tmp_path),
        "--json",
        str(out),
        "--set",
        'embedder={name = "hashing"}',
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout
    for heading in ("# Quality bar", "## Leakage", "## Copy ceiling"):
        assert heading in report, f"{heading!r} missing from:\n{report}"

    figures = json.loads(out.read_text())
    runs = {(run["retrieval"], run["seed"]): run for run in figures["runs"]}
    assert sorted(runs) == [(False, 0), (False, 1), (True, 0), (True, 1)]
    assert all(run["steps"] == 20 for run in runs.values())
    assert all(run["metrics"]["val/bpb"] > 0 for run in runs.values())
    assert all("val/bpb_retrieval_off" in runs[True, seed]["metrics"] for seed in (0, 1))
    # two seeds train differently
    assert runs[False, 0]["metrics"]["val/bpb"] != runs[False, 1]["metrics"]["val/bpb"]
    for kind, retrieval in (("retrieval", True), ("baseline", False)):
        both = [runs[retrieval, seed]["metrics"]["val/bpb"] for seed in (0, 1)]
        assert figures["median_bpb"][kind] == pytest.approx(sum(both) / 2)
    assert figures["gain"] == pytest.approx(
        1 - figures["median_bpb"]["retrieval"] / figures["median_bpb"]["baseline"]
    )
    assert sum(float(row["share"]) for row in runs[True, 0]["leakage"]) == pytest.approx(1.0)
    baseline = runs[False, 0]["metrics"]["val/bpb"]

    ceiling = figures["copy_ceiling"]
    assert [row["n"] for row in ceiling] == [8, 16, 32]
    shares = [row["share"] for row in ceiling]
    assert all(0 <= share <= 1 for share in shares) and shares == sorted(shares, reverse=True)
    for row in ceiling:
        # the ceiling is measured on the baseline, whose bpb the run itself reported
        assert row["baseline_bpb"] == pytest.approx(baseline, rel=1e-4)
        assert 0 <= row["ceiling_bpb"] <= row["baseline_bpb"]
        # the neighbours given are training text: what they hold is copyable from it too
        assert 0 <= row["given_share"] <= row["share"]

    # a second run reuses both finished runs and reports the same figures
    again = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=600, check=False
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier") >= 4
    # (compared as text: a share of 0 makes a mean loss NaN, which equals nothing)
    assert json.dumps(json.loads(out.read_text())["copy_ceiling"]) == json.dumps(ceiling)

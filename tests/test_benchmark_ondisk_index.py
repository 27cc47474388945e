"""The on-disk index benchmark still runs: ``benchmarks/ondisk_index.py --quick`` (20,000
vectors) in a subprocess, as a user would run it; the test checks that both tables and every
row are printed and that the on-disk indexes answer as the in-memory one, never a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "ondisk_index.py"


@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        timeout=HANG_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout
    for heading in ("# On-disk IVF index benchmark", "## Build", "## Search"):
        assert heading in report
    for row in ("| on-disk (faiss-ivf-ondisk) |", "| on-disk, 4 shards |", "| in memory"):
        assert row in report

    results = json.loads(out.read_text())
    searches = results["search"]
    assert [s["mode"] for s in searches] == ["memory"] * 2 + ["on-disk"] * 2 + [
        "on-disk, resident_mib 2"
    ] * 2 + ["on-disk, 4 shards"]
    assert all(s["same_ids_as_memory"] for s in searches)  # every mode answers as in memory
    for search in searches:
        memory = search["memory"]["end"]
        assert memory["VmHWM"] >= memory["RssAnon"] > 0 and search["qps_warm"] > 0
    assert results["ondisk_bytes"] > 0 and results["memory_index_bytes"] > 0

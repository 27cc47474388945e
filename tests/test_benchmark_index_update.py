"""The index update benchmark still runs: ``benchmarks/index_update.py --quick`` (20,000
vectors) in a subprocess, as a user would run it; the test checks its tables and JSON (the
script itself checks that update and rebuild end with the same ids), never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "index_update.py"
RETRIEVERS = ["faiss-flat", "faiss-ivfpq", "faiss-ivf-ondisk"]


@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=HANG_S, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout
    assert "# Index update benchmark" in report
    for row in [*RETRIEVERS, "IDSelectorBatch", "IDSelectorArray"]:
        assert sum(line.startswith(f"| {row} |") for line in report.splitlines()) == 1, row

    results = json.loads(out.read_text())
    assert (results["vectors"], results["changed"], results["repeats"]) == (20_000, 2_000, 1)
    assert list(results["summary"]) == RETRIEVERS
    for figures in results["summary"].values():
        assert figures["update_s"] > 0 and figures["rebuild_s"] > 0
    assert set(results["remove_selectors"]) == {"IDSelectorBatch", "IDSelectorArray"}

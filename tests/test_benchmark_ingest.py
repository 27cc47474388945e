"""The ingest benchmark still runs: ``benchmarks/ingest.py --quick`` as a user runs it (its own
PostgreSQL server, 40 standard-library files); the test checks its table and JSON, never a
timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S
from tests.postgres import find_bin_dir

ROOT = Path(__file__).resolve().parent.parent
KINDS = ["sqlite", "postgresql copy", "postgresql rows"]
#: the write-only measurement's kinds: ingest's, and one INSERT per row
WRITE_KINDS = [*KINDS, "postgresql per-row"]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.postgres
def test_quick_ingest_benchmark_prints_its_table(tmp_path: Path) -> None:
    if find_bin_dir() is None:
        pytest.skip("the benchmark starts a PostgreSQL server: initdb and pg_ctl are missing")
    out = tmp_path / "ingest.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "ingest.py"), "--quick"]
    done = subprocess.run(
        [*command, "--json", str(out)], capture_output=True, text=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "# Ingest benchmark" in done.stdout and "COPY against row inserts" in done.stdout
    for kind in WRITE_KINDS:
        assert sum(line.startswith(f"| {kind} |") for line in done.stdout.splitlines()) == 1

    results = json.loads(out.read_text())
    assert results["corpus"]["max_files"] == 40
    assert results["documents"] > 30 and results["chunks"] > results["documents"]
    assert list(results["summary"]) == WRITE_KINDS
    assert list(results["ingest"]) == KINDS
    for kind in WRITE_KINDS:
        if kind in KINDS:
            (ingested,) = results["ingest"][kind]
            assert (ingested["documents"], ingested["chunks"]) == (
                results["documents"],
                results["chunks"],
            )
        else:
            assert results["summary"][kind]["ingest_seconds"] is None
        (written,) = results["write_only"][kind]
        assert written["rows"] == results["documents"] + results["chunks"]
        assert written["server_cpu"] == 0 if kind == "sqlite" else written["server_cpu"] >= 0

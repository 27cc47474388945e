"""The retrieval benchmark still runs: a fast subset of ``benchmarks/retrieval.py --quick``.

Items 1, 2 (search and recall of the three Faiss retrievers, on a few thousand synthetic
vectors) and 5 (ingest of 20,000 synthetic chunks, watched from outside) run in a subprocess,
as a user would run them; the test checks that every table and every row is printed. The
MiniLM items (3, 4) are left out: embedding even the quick corpus takes minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "retrieval.py"


@pytest.mark.slow
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--only",
        "1,2,5",
        "--datasets",
        "synthetic",
        "--vectors",
        "2000",
        "--json",
        str(out),
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=HANG_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = completed.stdout

    for heading in (
        "# Retrieval-store benchmark",
        "## 1. Search",
        "## 2. Recall",
        "## 5. Ingest memory",
        "## Summary",
    ):
        assert heading in report, f"{heading!r} missing from:\n{report}"
    assert "## 3." not in report and "## 4." not in report  # not asked for

    for retriever in ("faiss-flat", "faiss-ivfpq", "faiss-hnsw"):
        rows = [line for line in report.splitlines() if f"| {retriever} |" in line]
        # item 1: one row per k (2 and 10); item 2: one row
        assert len(rows) == 3, f"{retriever}: {rows}"
        assert not any("error" in row.lower() or "timeout" in row for row in rows), rows
    assert "| synthetic (2,000) | faiss-flat | 2 |" in report
    assert "20,000 chunks" in report and "index: embedding part" in report

    results = json.loads(out.read_text())
    assert [r["status"] for r in results["index_results"]] == ["ok"] * 3
    flat = results["index_results"][0]
    assert flat["recall"] == {"2": 1.0, "10": 1.0}  # exact search against itself
    assert all(r["same_results"] for r in results["index_results"])
    last = results["ingest_scale"][-1]
    assert last["store"]["chunks"] == 20_000
    assert last["ingest"]["peak_rss"] > 0
    assert last["index"]["stopped"]  # stopped once the embeddings were stored
    assert last["index_store"]["embedding"]["status"] == "ready"

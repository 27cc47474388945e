"""The retrieval benchmark still runs: a fast subset of ``benchmarks/retrieval.py --quick``.

Items 1, 2 (search and recall of the three Faiss retrievers, on a few thousand synthetic
vectors), 5 (ingest of 20,000 synthetic chunks, watched from outside) and 6 (recall against
queries/s of the Faiss retrievers and the scann plugin, with its plot) run in a subprocess, as
a user would run them; the test checks that every table and every row is printed, never a
timing. The MiniLM items (3, 4) are left out: embedding even the quick corpus takes minutes on
2 cores. Item 6 needs the scann plugin (CI installs it); the benchmark allows it in its own
workers although this project's tests set an empty plugin allow-list.
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
@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    plot = tmp_path / "recall_vs_qps.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--only",
        "1,2,5,6",
        "--datasets",
        "synthetic",
        "--vectors",
        "2000",
        "--json",
        str(out),
        "--plot",
        str(plot),
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
        "## 6. Recall@10 against queries/s",
        "## Summary",
    ):
        assert heading in report, f"{heading!r} missing from:\n{report}"
    assert "## 3." not in report and "## 4." not in report  # not asked for

    items_1_2, item_6 = report.split("## 6.")
    for retriever in ("faiss-flat", "faiss-ivfpq", "faiss-hnsw"):
        rows = [line for line in items_1_2.splitlines() if f"| {retriever} |" in line]
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

    # item 6: every retriever built once and swept over its search-time knob
    sweep = {r["retriever"]: r for r in results["sweep"]}
    assert list(sweep) == ["faiss-flat", "faiss-ivfpq", "faiss-hnsw", "scann"]
    assert all(r["status"] == "ok" for r in sweep.values()), results["sweep"]
    assert [p["recall"] for p in sweep["faiss-flat"]["points"]] == [1.0]
    knobs = {"faiss-ivfpq": "nprobe", "faiss-hnsw": "efSearch", "scann": "leaves_to_search"}
    for retriever, knob in knobs.items():
        points = sweep[retriever]["points"]
        assert len(points) >= 5 and all(knob in p["setting"] for p in points), points
        assert all(0.0 <= p["recall"] <= 1.0 and min(p["times"]) > 0 for p in points)
        rows = [line for line in item_6.splitlines() if f"| {retriever} | {knob} " in line]
        assert len(rows) == len(points) - (retriever == "scann") * sum(
            "reorder" in p["setting"] for p in points
        ), rows
    scann = sweep["scann"]
    assert scann["points"][0]["setting"] == {"leaves_to_search": 1}
    # searching every leaf, with exact reordering, finds (nearly) all true neighbours
    every_leaf = {"leaves_to_search": scann["num_leaves"]}
    assert next(p for p in scann["points"] if p["setting"] == every_leaf)["recall"] >= 0.9
    assert "| synthetic (2,000) | scann, reorder 400 | leaves_to_search 4, reorder 400 |" in item_6
    assert plot.stat().st_size > 0 and plot.read_bytes().startswith(b"\x89PNG")

"""The generation benchmark still runs: ``benchmarks/generate.py --quick`` end to end.

A tiny experiment (six standard-library modules, byte tokens, 16-token chunks, hashing
embeddings, exact Faiss, a 2-layer 32-wide model, max_seq_len 64) is ingested and indexed by the
benchmark itself, at chunk size 16 and, as its second chunk size, 32; 16-token prompts, 80 new
tokens (so the window slides), batch 1 and 2, one repeat. No timing is checked: only that every
table and row is printed, that the cached and recompute paths made the same greedy tokens, and
that the JSON holds every measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.limits import HANG_S
from tests.runner.helpers import tiny_experiment

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "generate.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables(tmp_path: Path) -> None:
    experiment = tiny_experiment(tmp_path / "tiny")
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--experiment", str(experiment), "--quick"]
    command += ["--compare-chunk-size", "32", "--json", str(out)]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=HANG_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = completed.stdout

    for heading in (
        "# Generation benchmark (--quick",
        "## Tokens/s",
        "## Targets (issue 13)",
        "## Where the cached path's time goes",
        "## Retrieval per completed chunk",
    ):
        assert heading in report, f"{heading!r} missing from:\n{report}"
    assert "random weights (seed 0)" in report  # the tiny experiment was never trained
    assert "tokens vs cached: identical" in report
    assert "| greedy tokens, cached vs recompute | identical | identical | met |" in report
    for name in (
        "| 16 | 1 | recompute, retrieval on |",
        "| 16 | 1 | GPT-2 generate() |",
        "| 16 | 1 | GPT-2 past_key_values loop |",
        "| 16 | 1 | cached, retrieval off, no slide |",
        "| 16 | 2 | cached, retrieval on |",
        "| 32 | 1 | cached, retrieval off |",
        "| 32 | 2 | cached, retrieval on |",
    ):
        assert name in report, f"{name!r} missing from:\n{report}"
    assert "retrieval on / off time, cached, chunk 32, batch 1" in report
    assert "error" not in report.lower() and "timeout" not in report

    results = json.loads(out.read_text())
    assert [entry["chunk_size"] for entry in results["chunk_sizes"]] == [16, 32]
    for entry in results["chunk_sizes"]:
        assert entry["prepared"]["status"] == "ok"
        assert all(len(p) == 16 for p in entry["prepared"]["prompts"])
        assert [c["status"] for c in entry["comparisons"]] == ["ok", "ok"]
        for comparison in entry["comparisons"]:
            for variant in comparison["variants"]:
                rows = variant["batch"]
                assert len(variant["tokens"]) == rows
                assert all(len(t) == variant["new_tokens"] for t in variant["tokens"])
                assert variant["tokens_per_s"] > 0 and variant["deterministic"]
    first = {v["name"]: v for v in results["chunk_sizes"][0]["comparisons"][0]["variants"]}
    assert first["recompute, retrieval on"]["tokens"] == first["cached, retrieval on"]["tokens"]
    parts = first["cached, retrieval on"]["parts_median"]
    assert parts["retrieval"]["count"] == 5  # chunks 0..4 of 96 tokens (the last not retrieved)
    assert parts["re-prefill"]["calls"] == 2  # the window slid at 64 + 1 and 80 + 1 tokens
    assert {"embed", "search", "encoder", "step", "prefill"} <= set(parts)

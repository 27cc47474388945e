"""The quality benchmark still runs: ``benchmarks/quality.py --quick --seeds 2`` end to end on
``examples/code-reuse.toml``.

Six ``transformers`` model files, 4 steps of each run, the hashing embedder instead of MiniLM:
the sweep (retrieved, none and shuffled, two seeds) through ``retro-platform run``, the figures
read back from MLflow and the run folders, the bar, the leakage summary from each run's
``eval/chunks.npz``, the copy ceiling from the first seed's checkpoints; then the same command
again with ``--fractions 1,0.5``, which reuses every finished run and trains the two new ones.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "quality.py"
EXPERIMENT = ROOT / "examples" / "code-reuse.toml"
BAR_FIGURES = [
    "gain of retrieved over none (medians)",
    "held-out documents",
    "validation sequences",
    "seed spread",
    "shuffled vs none (medians, signed)",
    "minutes a run (longest)",
    "leakage: share of the gain from overlap > 0.5",
    "leakage: gain on chunks with overlap <= 0.25",
    "share of the copy ceiling at n = 16",
]


def run(command: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=HANG_S, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def bpb(runs: dict[tuple[str, int], Any], arm: str, seed: int) -> float:
    return runs[arm, seed]["metrics"]["val/bpb"]


@pytest.mark.slow
@pytest.mark.e2e
def test_quick_benchmark_prints_its_tables_and_reuses_its_runs(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--experiment",
        str(EXPERIMENT),
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
    report = run(command)
    for heading in ("# Quality bar", "## Runs", "## The bar", "## Leakage", "## Copy ceiling"):
        assert heading in report, f"{heading!r} missing from:\n{report}"
    assert (tmp_path / "quick" / "code-reuse.md").read_text().startswith("# Quality bar")

    figures = json.loads(out.read_text())
    runs = {(run["arm"], run["seed"]): run for run in figures["runs"]}
    arms = ["retrieved", "none", "shuffled"]
    assert figures["arms"] == arms
    assert sorted(runs) == sorted((arm, seed) for arm in arms for seed in (0, 1))
    assert all(run["steps"] == 4 and run["metrics"]["val/bpb"] > 0 for run in runs.values())
    for (arm, _), entry in runs.items():  # the arms that read neighbours also run without
        assert ("val/bpb_retrieval_off" in entry["metrics"]) == (arm != "none")
        assert entry["run_id"] in report
    assert bpb(runs, "retrieved", 0) != bpb(runs, "retrieved", 1)  # two seeds train differently

    median = figures["median_bpb"]
    for arm in arms:
        both = [bpb(runs, arm, seed) for seed in (0, 1)]
        assert median[arm] == pytest.approx(sum(both) / 2)
        assert figures["spread"][arm] == pytest.approx(abs(both[0] - both[1]) / median[arm])
    assert figures["gain"] == pytest.approx(1 - median["retrieved"] / median["none"])
    assert figures["shuffled_vs_none"] == pytest.approx(median["shuffled"] / median["none"] - 1)

    # the bar: every figure of the issue, with its verdict in the JSON and in the report
    bars = figures["bars"]
    assert len(bars) == len(BAR_FIGURES)
    for line, name in zip(bars, BAR_FIGURES, strict=True):
        assert line["figure"].startswith(name)
    verdict = {line["figure"]: line["met"] for line in bars}
    assert verdict["gain of retrieved over none (medians)"] == (figures["gain"] >= 0.10)
    validation = figures["validation"]
    assert validation["held_out_documents"] == 3 and validation["sequences"] == 8  # quick: small
    assert validation["same_chunks_in_every_run"]
    assert verdict["held-out documents"] is False and verdict["validation sequences"] is False
    assert verdict["minutes a run (longest)"] is True
    assert all(line["met"] is None for line in bars[-3:])  # reported, no bar
    for line in bars:
        mark = {True: "| met |", False: "| NOT met |", None: "| - |"}[line["met"]]
        assert f"| {line['figure']} | {line['target']} | {line['measured']} {mark}" in report

    # the leakage summary, from the comparison module, per seed and as medians
    leakage = figures["leakage"]
    assert [entry["seed"] for entry in leakage["seeds"]] == [0, 1]
    for entry in leakage["seeds"]:
        comparison = entry["comparison"]
        assert comparison["columns"] == [
            "retrieved",
            "retrieved [retrieval off]",
            "none",
            "shuffled",
        ]
        *buckets, every = comparison["rows"]
        assert every["bucket"] == "all chunks"
        assert sum(row["share"] for row in buckets) == pytest.approx(1.0)
        for column, arm in (("retrieved", "retrieved"), ("none", "none"), ("shuffled", "shuffled")):
            at = comparison["columns"].index(column)
            assert every["bpb"][at] == pytest.approx(bpb(runs, arm, entry["seed"]), rel=1e-4)
        assert (entry["gain_bits"] > 0) == (
            bpb(runs, "retrieved", entry["seed"]) < bpb(runs, "none", entry["seed"])
        )
    for key in ("high_share", "low_gain_bpb", "low_gain_relative"):
        values = [entry[key] for entry in leakage["seeds"] if math.isfinite(entry[key])]
        assert leakage["median"][key] == pytest.approx(sum(values) / len(values))

    # the copy ceiling, measured on seed 0's none run, and the share of it the gain reaches
    ceiling = figures["copy_ceiling"]
    assert [row["n"] for row in ceiling] == [8, 16, 32]
    shares = [row["share"] for row in ceiling]
    assert all(0 <= share <= 1 for share in shares) and shares == sorted(shares, reverse=True)
    for row in ceiling:
        assert row["none_bpb"] == pytest.approx(bpb(runs, "none", 0), rel=1e-4)
        assert 0 <= row["ceiling_bpb"] <= row["none_bpb"]
        assert 0 <= row["given_share"] <= row["share"]
    share = figures["ceiling_share"]
    assert share["n"] == 16 and share["reduction"] == ceiling[1]["reduction"]
    assert share["share"] == pytest.approx(figures["gain"] / share["reduction"])
    assert "of the copy ceiling at n = 16" in report

    # again, with the training fractions: every finished run is reused, fraction 1 included
    again = run([*command, "--fractions", "1,0.5"])
    assert again.count(": finished earlier (MLflow run") == 6 + 2
    refigured = json.loads(out.read_text())
    # (compared as text: a share of 0 makes a mean loss NaN, which equals nothing)
    assert json.dumps(refigured["copy_ceiling"]) == json.dumps(ceiling)
    assert refigured["median_bpb"] == median
    assert "## The gain as the training share shrinks" in again
    rows = {row["fraction"]: row for row in refigured["fractions"]}
    assert sorted(rows) == [0.5, 1.0]
    whole, half = rows[1.0], rows[0.5]
    assert whole["run_ids"] == {
        "retrieved/0": runs["retrieved", 0]["run_id"],
        "none/0": runs["none", 0]["run_id"],
    }
    assert whole["retrieved_bpb"] == bpb(runs, "retrieved", 0)
    assert whole["gain"] == pytest.approx(1 - whole["retrieved_bpb"] / whole["none_bpb"])
    assert whole["training_documents"] == whole["database_documents"] == 3
    assert 0 < half["training_documents"] <= half["database_documents"] == 3
    assert set(half["run_ids"].values()).isdisjoint(run["run_id"] for run in runs.values())
    # the text copyable from what a fraction trains on: all of the database's at fraction 1
    # (the copy ceiling's share), a part of it at a half
    copyable = refigured["copyable"]
    assert copyable["database"] == whole["copyable"] == ceiling[1]["share"]
    assert 0 <= half["copyable"] <= whole["copyable"]
    assert "copyable from training documents (n = 16)" in again

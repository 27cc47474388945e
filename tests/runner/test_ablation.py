"""A sweep over ``train.neighbours`` (retrieved, none, shuffled) through the CLI: its parent
run logs the comparison by neighbour overlap to MLflow, and ``retro-platform runs`` prints it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from retro_platform.config import load_experiment
from retro_platform.config.runner_tables import EvalTable
from retro_platform.config.sweep import sweep_points
from retro_platform.evaluation.comparison import OFF_SUFFIX, ChunkFigures
from retro_platform.runner.ablation import compare_points
from retro_platform.runner.folder import CHUNK_FIGURES, RunOutcome
from tests.runner.helpers import artifact_paths, client_for, runs_of, tiny_experiment

KINDS = ["retrieved", "none", "shuffled"]
LABELS = [f"neighbours={kind}" for kind in KINDS]


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_an_ablation_logs_its_comparison_and_runs_prints_it(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path, sweep={"train.neighbours": KINDS})
    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert "the points compared" in result.stdout and "| all chunks" in result.stdout

    runs = runs_of(path)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.info.run_name: run for run in runs if run not in [parent]}
    assert sorted(children) == sorted(LABELS)
    client = client_for(path)
    parent_id = parent.info.run_id
    assert parent.data.tags["retro.comparison"] == "comparison/comparison.md"
    assert "| all chunks" in parent.data.tags["mlflow.note.content"]  # the UI's description
    assert artifact_paths(client, parent_id) == {
        "comparison/comparison.csv",
        "comparison/comparison.md",
        "comparison/comparison.png",
        "comparison/points.csv",
        "comparison/points.md",
        "comparison/points.png",
    }
    for child in children.values():  # every point keeps its per-chunk figures
        assert "eval/chunks.npz" in artifact_paths(client, child.info.run_id)

    download = tmp_path / "download"
    rows = read_csv(client.download_artifacts(parent_id, "comparison/comparison.csv", download))
    off = "neighbours=retrieved [retrieval off]"
    assert list(rows[0]) == ["bucket", "chunks", "share", "byte_share", LABELS[0], off, *LABELS[1:]]
    edges = EvalTable().leakage_buckets
    assert len(rows) == len(edges) - 1 + 1 and rows[-1]["bucket"] == "all chunks"
    # the all-chunks row is each run's validation bpb (the CSV keeps 6 significant digits)
    retrieved, none, shuffled = (children[label].data.metrics for label in LABELS)
    for column, expected in [
        (LABELS[0], retrieved["val/bpb"]),
        (off, retrieved["val/bpb_retrieval_off"]),
        (LABELS[1], none["val/bpb"]),
        (LABELS[2], shuffled["val/bpb"]),
    ]:
        assert float(rows[-1][column]) == pytest.approx(expected, rel=1e-5), column
    # the buckets are the retrieved run's own leakage table's, for every run
    leakage = read_csv(
        client.download_artifacts(
            children[LABELS[0]].info.run_id, "leakage/leakage.csv", download / "leakage"
        )
    )
    assert [row["bucket"] for row in rows[:-1]] == [row["bucket"] for row in leakage]
    assert [row["chunks"] for row in rows[:-1]] == [row["chunks"] for row in leakage]
    for ours, theirs in zip(rows, leakage, strict=False):
        assert ours[LABELS[0]] == theirs["bpb"] and ours[off] == theirs["bpb_off"]
    assert sum(int(row["chunks"]) for row in rows[:-1]) == int(rows[-1]["chunks"])
    png = client.download_artifacts(parent_id, "comparison/comparison.png", download)
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (path.parent / "runs").glob("runner-test-sweep-*/comparison/comparison.png")

    listed = CliRunner().invoke(cli, ["runs", str(path)])
    assert listed.exit_code == 0, listed.stderr
    table, _, comparison = listed.stdout.partition("\n\n")
    assert all(label in table for label in LABELS)
    assert comparison.startswith(f"runner-test sweep ({parent_id[:8]}): Validation bits per byte")
    assert f"bpb: {off}" in comparison and "| all chunks" in comparison
    assert "neighbours=retrieved over neighbours=none: " in comparison
    as_json = json.loads(CliRunner().invoke(cli, ["runs", str(path), "--json"]).stdout)
    by_name = {run["run_name"]: run for run in as_json}
    assert by_name[LABELS[0]]["comparison"] is None
    compared = by_name["runner-test sweep"]["comparison"]
    assert [row["bucket"] for row in compared] == [row["bucket"] for row in rows]
    assert [row["chunks"] for row in compared] == [int(row["chunks"]) for row in rows]
    assert compared[-1][LABELS[1]] == pytest.approx(none["val/bpb"], rel=1e-5)

    # run again: every point finished earlier, and the comparison is built from their folders
    again = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert again.exit_code == 0, again.stderr
    assert again.stdout.count("finished earlier") >= 3 and "| all chunks" in again.stdout


def test_each_run_is_bucketed_by_the_retrieved_point_with_its_seed(tmp_path: Path) -> None:
    """Hand-made per-chunk figures in real run folders: the seed-1 baseline takes the seed-1
    retrieved point's overlaps, and each seed's retrieved point is split over its baseline."""
    path = tiny_experiment(
        tmp_path, sweep={"train.neighbours": ["retrieved", "none"], "experiment.seed": [0, 1]}
    )
    points = sweep_points(load_experiment(path))
    rows, sizes = [5, 6], [10, 10]
    per_point = {  # (neighbours, seed) -> bits per chunk, overlaps
        ("retrieved", 0): ([1, 2], [0.0, 1.0]),
        ("none", 0): ([2, 4], None),
        ("retrieved", 1): ([3, 4], [1.0, 0.0]),  # the other way round, to tell them apart
        ("none", 1): ([5, 6], None),
    }
    outcomes = []
    for point in points:
        bits, overlap = per_point[
            (point.experiment.train.neighbours, point.values["experiment.seed"])
        ]
        folder = tmp_path / f"point-{point.index}"
        ChunkFigures(
            chunk_rows=np.array(rows),
            chunk_loss=np.array(bits, dtype=float) * math.log(2),
            chunk_loss_off=None if overlap is None else np.array(bits, dtype=float) * math.log(2),
            chunk_tokens=np.array([10, 10]),
            chunk_bytes=np.array(sizes),
            chunk_overlap=None if overlap is None else np.array(overlap),
        ).save(folder / CHUNK_FIGURES)
        outcomes.append(RunOutcome(point.label, f"{point.index:032x}", folder))

    made = compare_points(points, outcomes, (0.0, 0.5, 1.0))
    assert made is not None
    comparison, splits = made
    labels = [point.label for point in points]
    assert comparison.columns == (
        labels[0], labels[0] + OFF_SUFFIX, labels[1], labels[1] + OFF_SUFFIX, labels[2], labels[3]
    )  # fmt: skip
    baseline_seed_1 = labels[
        [p.values for p in points].index({"train.neighbours": "none", "experiment.seed": 1})
    ]
    # row 5 overlaps by 1.0 at seed 1 (by 0 at seed 0): its 5 bits over 10 bytes in (0.5, 1]
    assert comparison.bpb(baseline_seed_1, "(0.5, 1]") == pytest.approx(0.5)
    assert comparison.bpb(baseline_seed_1, "[0, 0.5]") == pytest.approx(0.6)
    assert len(splits) == 2
    # seed 1: rows 5 and 6 save 2 bits each; row 5 overlaps by more than 0.5
    (seed_1,) = [split for title, split in splits.items() if title.startswith(labels[1])]
    assert seed_1.gain_bits == pytest.approx(4.0) and seed_1.high_share == pytest.approx(0.5)


def test_a_point_without_figures_means_no_comparison(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path, sweep={"train.neighbours": ["retrieved", "none"]})
    points = sweep_points(load_experiment(path))
    outcomes = [RunOutcome(p.label, "0" * 32, tmp_path / p.label) for p in points]
    said: list[str] = []
    assert compare_points(points, outcomes, (0.0, 1.0), log=said.append) is None
    assert said and "kept no per-chunk figures" in said[0]
    # a sweep that does not vary the neighbours compares nothing, and says nothing
    other = sweep_points(load_experiment(tiny_experiment(tmp_path, sweep={"train.lr": [0.1, 0.2]})))
    assert compare_points(other, outcomes, (0.0, 1.0), log=said.append) is None
    assert len(said) == 1

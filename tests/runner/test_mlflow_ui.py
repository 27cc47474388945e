"""What a newcomer sees of a sweep in the MLflow UI, read back from the real tracking store:
short run names, descriptions that state the result, no metric without a meaning, and a parent
run that holds the comparison and names its best point. One real sweep (retrieval on and off)
serves every test of the module."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from tests.runner.helpers import artifact_paths, client_for, runs_of, tiny_experiment

DESCRIPTION = "mlflow.note.content"
RETRIEVED, NONE = "neighbours=retrieved", "neighbours=none"


@dataclass
class Sweep:
    path: Path
    parent: Any
    children: dict[str, Any]  # run name -> run


def read_sweep(path: Path) -> Sweep:
    runs = runs_of(path)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = {run.info.run_name: run for run in runs if run is not parent}
    return Sweep(path, parent, children)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    path = tiny_experiment(
        tmp_path_factory.mktemp("sweep"), sweep={"train.neighbours": ["retrieved", "none"]}
    )
    result = CliRunner().invoke(cli, ["run", str(path), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    return read_sweep(path)


def test_runs_have_short_readable_names(sweep: Sweep) -> None:
    assert sweep.parent.info.run_name == "runner-test sweep"
    assert sorted(sweep.children) == sorted([RETRIEVED, NONE])


def test_each_point_describes_its_result(sweep: Sweep) -> None:
    retrieved, none = sweep.children[RETRIEVED], sweep.children[NONE]
    bpb = retrieved.data.metrics["val/bpb"]
    off = retrieved.data.metrics["val/bpb_retrieval_off"]
    baseline = none.data.metrics["val/bpb"]
    assert retrieved.data.tags[DESCRIPTION] == (
        f"retrieval on: val bpb {bpb:.4f} ({(bpb - baseline) / baseline:+.1%} vs trained "
        f"without, {NONE}: {baseline:.4f}; {(bpb - off) / off:+.1%} vs the same weights "
        f"without it: {off:.4f})"
    )
    assert none.data.tags[DESCRIPTION] == f"trained without retrieval: val bpb {baseline:.4f}"


def test_no_run_logs_a_metric_without_a_meaning(sweep: Sweep) -> None:
    client = client_for(sweep.path)
    for run in [sweep.parent, *sweep.children.values()]:
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            assert all(math.isfinite(metric.value) for metric in history), (run.info.run_name, key)
    # trained without retrieval, there is nothing to switch off
    assert not [key for key in sweep.children[NONE].data.metrics if "retrieval_off" in key]
    assert "val/bpb_retrieval_off" in sweep.children[RETRIEVED].data.metrics


def test_the_parent_holds_the_comparison_and_names_the_best_point(
    sweep: Sweep, tmp_path: Path
) -> None:
    client = client_for(sweep.path)
    parent = sweep.parent
    assert artifact_paths(client, parent.info.run_id) == {
        "comparison/comparison.csv",
        "comparison/comparison.md",
        "comparison/comparison.png",
        "comparison/points.csv",
        "comparison/points.md",
        "comparison/points.png",
    }
    best_name, best = min(sweep.children.items(), key=lambda item: item[1].data.metrics["val/bpb"])
    assert parent.data.metrics["best/val_bpb"] == best.data.metrics["val/bpb"]
    assert parent.data.tags["retro.best_run"] == best.info.run_id
    assert parent.data.tags["retro.best_run_name"] == best_name
    description = parent.data.tags[DESCRIPTION]
    assert description.startswith(
        f"Sweep of 2 points; the best is **{best_name}** (run {best.info.run_id[:8]}): "
        f"{best.data.tags[DESCRIPTION]}."
    )
    for name, child in sweep.children.items():  # a row per point, then the comparison
        assert f"| {name} " in description and child.info.run_id[:8] in description
    assert "| all chunks" in description
    table = client.download_artifacts(parent.info.run_id, "comparison/points.csv", str(tmp_path))
    with Path(table).open(newline="", encoding="utf-8") as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert set(rows) == set(sweep.children)
    for name, child in sweep.children.items():
        assert rows[name]["run_id"] == child.info.run_id
        assert float(rows[name]["val/bpb"]) == child.data.metrics["val/bpb"]
    assert rows[NONE]["val/bpb_retrieval_off"] == ""
    png = client.download_artifacts(parent.info.run_id, "comparison/points.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_running_the_sweep_again_skips_its_points_and_keeps_its_runs(sweep: Sweep) -> None:
    result = CliRunner().invoke(cli, ["run", str(sweep.path), "--no-progress"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.count(": finished earlier (MLflow run") == 2
    again = read_sweep(sweep.path)
    assert again.parent.info.run_id == sweep.parent.info.run_id
    assert {name: run.info.run_id for name, run in again.children.items()} == {
        name: run.info.run_id for name, run in sweep.children.items()
    }
    assert again.parent.data.tags[DESCRIPTION] == sweep.parent.data.tags[DESCRIPTION]

"""Runs logged to a shared ``mlflow server``: PostgreSQL backend, proxied artifacts, loopback.

Two ``retro-platform run`` processes, started together from two folders of their own (each
with its store), log into one MLflow experiment on a real server (``tests/mlflow_server.py``);
their params, metrics and artifacts come back through the server's HTTP API alone, and
``retro-platform runs`` lines them up. A server that dies during training stops the run with
one line that says how to resume. (A server that is down is refused before any work,
in one line: ``tests/runner/test_run.py``, ``tests/tracking/test_cli.py``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from retro_platform.cli import cli
from retro_platform.tracking.run import RUN_ID_FILE
from tests.limits import HANG_S
from tests.mlflow_server import MlflowServer, start_mlflow_server, stop_mlflow_server
from tests.postgres import PostgresServer
from tests.runner.helpers import artifact_paths, tiny_experiment

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.e2e]

SHARED = "shared-server"


def test_two_runs_from_two_processes_share_one_experiment(
    mlflow_server: MlflowServer,
    tmp_path: Path,
) -> None:
    paths = {
        seed: tiny_experiment(
            tmp_path / f"seed-{seed}",
            experiment={"seed": seed},
            mlflow={"tracking_uri": mlflow_server.url, "experiment": SHARED},
        )
        for seed in (1, 2)
    }
    command = [sys.executable, "-m", "retro_platform.cli", "run"]
    running = {
        seed: subprocess.Popen(
            [*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for seed, path in paths.items()
    }
    for seed, process in running.items():
        out, err = process.communicate(timeout=HANG_S)
        assert process.returncode == 0, f"seed {seed}: {err[-3000:]}"

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(SHARED)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.params["experiment.seed"] for run in runs) == ["1", "2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert 0 < run.data.metrics["val/bpb"] < 20
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [
            2, 4, 6,
        ]  # fmt: skip
        # artifacts go through the server (proxied), which keeps them in its own folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        assert {"config/experiment.toml", "samples.md", "checkpoint/checkpoint.pt"} <= (
            artifact_paths(client, run.info.run_id)
        )
        folder = tmp_path / "downloads" / run.info.run_id
        config = client.download_artifacts(run.info.run_id, "config/experiment.toml", str(folder))
        seed = run.data.params["experiment.seed"]
        assert Path(config).read_text() == paths[int(seed)].read_text()
        stored = mlflow_server.artifacts / experiment.experiment_id / run.info.run_id
        assert (stored / "artifacts" / "samples.md").is_file()

    # the comparison: one table of both runs, the param that differs as a column
    listed = CliRunner().invoke(cli, ["runs", str(paths[1])])
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert "experiment.seed" in header and len(rows) == 2
    as_json = CliRunner().invoke(cli, ["runs", str(paths[2]), "--json"])
    assert as_json.exit_code == 0, as_json.output
    listed_runs = json.loads(as_json.output)
    assert sorted(run["params"]["experiment.seed"] for run in listed_runs) == ["1", "2"]
    assert {run["run_id"] for run in listed_runs} == {run.info.run_id for run in runs}


def test_a_server_that_dies_during_training_stops_the_run_with_one_line(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    (tmp_path / "server").mkdir()
    server, process = start_mlflow_server(postgres_server, tmp_path / "server")
    try:
        path = tiny_experiment(
            tmp_path / "run",
            train={"steps": 100_000, "checkpoint_every": 5, "log_every": 5},
            mlflow={"tracking_uri": server.url},
        )
        # MLflow retries each request for about 4 minutes by default: one retry here
        env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
        running = subprocess.Popen(
            [sys.executable, "-m", "retro_platform.cli", "run", "--no-progress", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        started = tmp_path / "run" / "runs"
        deadline = time.monotonic() + HANG_S
        while not any(started.glob("*/checkpoint.pt")) and running.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint"
            time.sleep(0.1)
    finally:
        stop_mlflow_server(process)  # mid-training: the run logs every 5 steps
    _, err = running.communicate(timeout=HANG_S)
    last = err.splitlines()[-1]
    assert running.returncode == 2, err[-3000:]
    assert last.startswith(f"Error: cannot log to {server.url}: ")
    assert "the run resumes from its last checkpoint" in last
    # the request that failed, not the status update the failure made afterwards
    assert "runs/log-batch" in last and "runs/update" not in last and "runs/get" not in last
    (run_id_file,) = started.glob(f"*/{RUN_ID_FILE}")
    # the server could not be told: the run stays RUNNING, as after SIGKILL, for the rerun
    run = MlflowClient(tracking_uri=server.backend_uri).get_run(run_id_file.read_text().strip())
    assert run.info.status == "RUNNING"

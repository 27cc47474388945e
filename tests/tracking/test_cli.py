"""``retro-platform runs`` and ``retro-platform ui`` on a real SQLite tracking store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from retro_platform.cli import cli
from retro_platform.config import load_experiment
from retro_platform.tracking.client import open_client
from retro_platform.tracking.run import TrackedRun
from retro_platform.tracking.uri import experiment_name, sqlite_path, tracking_uri
from tests.tracking.helpers import free_port

MakeFile = Callable[..., Path]


def invoke(*arguments: object) -> Result:
    return CliRunner().invoke(cli, [str(argument) for argument in arguments])


def track_runs(path: Path) -> dict[str, str]:
    """A baseline run, then a sweep parent with two children: run name -> run id."""
    experiment = load_experiment(path)
    client = open_client(tracking_uri(experiment))
    name = experiment_name(experiment)
    common = {"train.steps": "100", "retriever.name": "faiss-flat"}
    ids = {}

    def one(run_name: str, lr: str, bpb: float, parent: str | None = None) -> None:
        with TrackedRun.start(client, name, run_name=run_name, parent_run_id=parent) as run:
            run.log_params({**common, "train.lr": lr})
            run.log_metrics(1, {"train/loss": 4.0, "val/bpb": bpb + 1})
            run.log_metrics(2, {"train/loss": 3.25, "val/bpb": bpb, "val/loss": 2.0})
            ids[run_name] = run.run_id

    one("baseline", "0.001", 2.5)
    sweep = TrackedRun.start(client, name, run_name="sweep")
    sweep.log_params({"sweep.train.lr": '["0.01", "0.1"]'})  # a grid, not a config
    ids["sweep"] = sweep.run_id
    one("lr-0.01", "0.01", 2.25, parent=sweep.run_id)
    one("lr-0.1", "0.1", 3.0, parent=sweep.run_id)
    sweep.finish()
    return ids


def test_runs_shows_the_params_that_differ_and_children_under_their_parent(
    experiment_file: MakeFile,
) -> None:
    path = experiment_file()
    ids = track_runs(path)
    result = invoke("runs", path)
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "RUN", "ID", "STATUS", "STARTED", "train.lr",
        "val/bpb", "val/bpb_retrieval_off", "val/loss", "train/loss",
    ]  # fmt: skip
    assert [row.split()[:3] for row in rows] == [
        ["baseline", ids["baseline"][:8], "FINISHED"],
        ["sweep", ids["sweep"][:8], "FINISHED"],
        ["-", "lr-0.01", ids["lr-0.01"][:8]],
        ["-", "lr-0.1", ids["lr-0.1"][:8]],
    ]
    assert rows[2].startswith("  - lr-0.01")  # indented under its parent
    # the params that differ, then the last value of each metric ("-": never logged)
    assert rows[0].split()[-5:] == ["0.001", "2.5000", "-", "2.0000", "3.2500"]
    assert rows[1].split()[-5:] == ["-"] * 5  # the parent logged no config, no metric
    assert rows[3].split()[-5:] == ["0.1", "3.0000", "-", "2.0000", "3.2500"]


def test_runs_all_params_and_json(experiment_file: MakeFile) -> None:
    path = experiment_file()
    ids = track_runs(path)
    header = invoke("runs", path, "--all-params").stdout.splitlines()[0].split()
    assert header[4:8] == ["retriever.name", "sweep.train.lr", "train.lr", "train.steps"]
    result = invoke("runs", path, "--json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [run["run_name"] for run in listed] == ["baseline", "sweep", "lr-0.01", "lr-0.1"]
    child = listed[2]
    assert child["run_id"] == ids["lr-0.01"]
    assert child["parent_run_id"] == ids["sweep"]
    assert child["params"] == {"train.lr": "0.01"}
    assert listed[1]["params"] == {}  # the sweep parent's grid is not a differing param
    assert child["metrics"] == {"train/loss": 3.25, "val/bpb": 2.25, "val/loss": 2.0}
    assert child["status"] == "FINISHED" and child["start_time"]


def test_runs_of_an_experiment_without_runs_says_so_and_creates_nothing(
    experiment_file: MakeFile, tmp_path: Path
) -> None:
    path = experiment_file()
    result = invoke("runs", path)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("No runs of experiment 'pipeline-test' in sqlite:///")
    assert "retro-platform run" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()
    assert json.loads(invoke("runs", path, "--json").stdout) == []


def test_runs_with_an_unreachable_server_is_one_line_and_exit_2(
    experiment_file: MakeFile,
) -> None:
    uri = f"http://me:hunter2@127.0.0.1:{free_port()}"
    path = experiment_file(mlflow={"tracking_uri": uri})
    started = time.monotonic()
    result = invoke("runs", path)
    assert time.monotonic() - started < 10
    assert result.exit_code == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: tracking server http://me:***@127.0.0.1:")
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize("command", ["runs", "ui", "run"])
def test_a_damaged_tracking_database_is_one_line_and_exit_2(
    command: str, experiment_file: MakeFile, tmp_path: Path
) -> None:
    path = experiment_file()
    damaged = b"not a database, but not empty either"
    (tmp_path / "mlflow.db").write_bytes(damaged)
    result = invoke(command, path)
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"Error: cannot open the tracking store sqlite:///{tmp_path / 'mlflow.db'}: file is not "
        "a database; check that no other program holds it and that it is an MLflow database, "
        "or set [mlflow] tracking_uri to another store\n"
    )
    assert (tmp_path / "mlflow.db").read_bytes() == damaged


@pytest.mark.parametrize("command", ["runs", "ui"])
def test_a_missing_experiment_file_is_one_line_and_exit_2(command: str, tmp_path: Path) -> None:
    result = invoke(command, tmp_path / "nope.toml")
    assert result.exit_code == 2
    assert result.stderr == f"Error: experiment file {tmp_path / 'nope.toml'} does not exist\n"


def test_runs_refuses_a_file_store(experiment_file: MakeFile) -> None:
    result = invoke("runs", experiment_file(mlflow={"tracking_uri": "mlruns"}))
    assert result.exit_code == 2
    assert "file store" in result.stderr and len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------- ui


def test_ui_refuses_a_tracking_server(experiment_file: MakeFile) -> None:
    path = experiment_file(mlflow={"tracking_uri": "https://me:hunter2@mlflow.example"})
    result = invoke("ui", path)
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: the tracking URI is a server, https://me:***@mlflow.example: open that URL in "
        "a browser, it is the UI\n"
    )


def test_ui_refuses_a_port_in_use(experiment_file: MakeFile) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = invoke("ui", experiment_file(), "--port", port)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port} (")
    assert "pass another --port" in result.stderr


#: ``python SCRIPT OPENED ARGUMENTS...``: the CLI with a stand-in for the MLflow server, which
#: answers every request with 200 until the browser has been opened (the file OPENED exists).
FAKE_UI = '''
import subprocess, sys
from retro_platform.cli import cli, tracking

SERVER = """
import http.server, pathlib, sys, threading, time
class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Answer)
threading.Thread(target=server.serve_forever, daemon=True).start()
deadline = time.monotonic() + 60
while not pathlib.Path(sys.argv[2]).exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""

def start(command, env):
    port = command[command.index("--port") + 1]
    return subprocess.Popen(
        [sys.executable, "-c", SERVER, port, sys.argv[1]], start_new_session=True
    )

tracking._start_server = start
cli(sys.argv[2:], prog_name="retro-platform")
'''


def browser_script(folder: Path) -> tuple[Path, Path]:
    """A BROWSER command that writes the URL it is given to a file: (script, that file)."""
    opened = folder / "opened.txt"
    script = folder / "browser.sh"
    script.write_text(
        f'#!/bin/sh\nprintf %s "$1" > "{opened}.part" && mv "{opened}.part" "{opened}"\n'
    )
    script.chmod(0o755)
    return script, opened


def test_ui_prints_the_link_to_the_runs_table_and_opens_it(
    experiment_file: MakeFile, tmp_path: Path
) -> None:
    path = experiment_file()
    track_runs(path)
    experiment = load_experiment(path)
    client = open_client(tracking_uri(experiment))
    found = client.get_experiment_by_name(experiment_name(experiment))
    assert found is not None
    port = free_port()
    link = (
        f"http://127.0.0.1:{port}/#/experiments/{found.experiment_id}?workflowType=machine_learning"
    )
    script, opened = browser_script(tmp_path)
    fake = tmp_path / "fake_ui.py"
    fake.write_text(FAKE_UI)
    done = subprocess.run(
        [sys.executable, str(fake), str(opened), "ui", str(path), "--port", str(port), "--open"],
        env={**os.environ, "BROWSER": f"{script} %s", "PYTHONPATH": str(Path.cwd())},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"the runs of experiment 'pipeline-test': {link}"
    assert opened.read_text() == link


def _get(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "terminate"])
def test_ui_serves_the_tracking_store_and_stops_with_its_workers(
    experiment_file: MakeFile, tmp_path: Path, stop: signal.Signals
) -> None:
    path = experiment_file()
    track_runs(path)
    database = sqlite_path(tracking_uri(load_experiment(path)))
    assert database is not None and database.is_file()
    port = free_port()
    log = tmp_path / "ui.log"
    script, opened = browser_script(tmp_path)
    open_it = ["--open"] if stop == signal.SIGINT else []
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "retro_platform.cli", "ui", str(path), "--port", str(port)]
            + open_it,
            env={**os.environ, "BROWSER": f"{script} %s"},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # started as a script's background job is: with SIGINT ignored, which Python
            # inherits; Ctrl-C must stop it all the same
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a first start takes 40-60 s on 2 busy cores
        while _get(f"{base}/health") != 200:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        assert _get(f"{base}/") == 200
        search = urllib.request.Request(
            f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=pipeline-test"
        )
        with urllib.request.urlopen(search, timeout=10) as response:
            assert json.load(response)["experiment"]["name"] == "pipeline-test"
        first_line, link_line = log.read_text().splitlines()[:2]
        assert first_line == f"MLflow UI of sqlite:///{database} at {base} (Ctrl-C stops it)"
        with urllib.request.urlopen(search, timeout=10) as response:
            experiment_id = json.load(response)["experiment"]["experiment_id"]
        link = f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"
        assert link_line == f"the runs of experiment 'pipeline-test': {link}"
        deadline = time.monotonic() + 10  # --open: once the UI answers
        while open_it and not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (opened.read_text() if opened.exists() else None) == (link if open_it else None)

        process.send_signal(stop)
        assert process.wait(timeout=30) == 0
        assert _get(f"{base}/health") is None  # the server's workers are gone too
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

"""``retro-platform run`` under torchrun (``--nproc``; gloo on the CPU), in real processes:
the same losses as one process, one MLflow run logged by process 0, a run killed with SIGKILL
resumed by another number of processes, and a batch the processes cannot share refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import func, select

from retro_platform.cli import cli
from retro_platform.config import load_experiment
from retro_platform.store.database import open_store
from retro_platform.store.models import EmbeddingSet, NeighbourSet, StageShard
from retro_platform.training.checkpoint import checkpoint_path, load_checkpoint
from tests.limits import HANG_S
from tests.runner.helpers import client_for, runs_of, tiny_experiment
from tests.runner.test_run import folder_of

REPO = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "retro_platform", "run", "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _run(path: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*COMMAND, str(path), *args], env=_env(), capture_output=True,
                          text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _history(path: Path, key: str) -> list[tuple[int, float]]:
    (run,) = runs_of(path)
    return [(m.step, m.value) for m in client_for(path).get_metric_history(run.info.run_id, key)]


def test_a_batch_size_the_processes_cannot_share_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tiny_experiment(tmp_path, train={"batch_size": 4})
    refused = CliRunner().invoke(cli, ["run", str(path), "--nproc", "3"])
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        "Error: [train] batch_size (4) must divide by the number of training processes (3), "
        "each of which takes an equal slice of every batch; choose a batch_size that is a "
        "multiple of 3, or another number of processes"
    ]
    # under torchrun itself each process refuses before joining the others
    torchrun = {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}
    refused = CliRunner(env=torchrun).invoke(cli, ["run", str(path)])
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "batch_size (4) must divide" in refused.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "store").exists()
    # --nproc starts torchrun: not from inside it
    nested = CliRunner(env={"WORLD_SIZE": "2", "RANK": "1"}).invoke(
        cli, ["run", str(path), "--nproc", "2"]
    )
    assert nested.exit_code == 2
    assert nested.stderr.strip() == (
        "Error: --nproc starts torchrun itself: leave it out under torchrun"
    )


@pytest.mark.e2e
def test_two_processes_train_as_one_and_process_0_alone_logs_one_mlflow_run(
    tmp_path: Path,
) -> None:
    """The same global batches: the loss curve of 2 processes equals 1 process's to 1e-6
    (relative; measured 4e-8: only the order of float sums differs), and so does the
    validation after training."""
    tables = {"train": {"steps": 8, "log_every": 2}}
    one = tiny_experiment(tmp_path / "one", **tables)
    two = tiny_experiment(tmp_path / "two", **tables)
    _run(one)
    out = _run(two, "--nproc", "2").stdout

    (run,) = runs_of(two)  # one MLflow run, however many processes
    assert run.info.status == "FINISHED"
    assert out.count(": MLflow run ") == 1 and out.count("validation: loss") == 1
    losses = _history(two, "train/loss")
    assert [step for step, _ in losses] == [2, 4, 6, 8]  # each step logged once
    expected = _history(one, "train/loss")
    assert [v for _, v in losses] == pytest.approx([v for _, v in expected], rel=1e-6)
    for key in ("val/loss", "val/bpb", "val/bpb_retrieval_off"):
        assert _history(two, key)[0][1] == pytest.approx(_history(one, key)[0][1], rel=1e-5)
    # tokens/s is the whole batch's: both processes' tokens
    tokens = load_checkpoint(checkpoint_path(folder_of(two)))["tokens"]
    assert tokens == load_checkpoint(checkpoint_path(folder_of(one)))["tokens"]
    # the retrieval stages ran in 2 shards, merged into the bytes one process wrote
    sharded, single = _stage_files(two), _stage_files(one)
    assert sharded.pop("shards") == [(2, 2), (2, 2)] and single.pop("shards") == []
    assert sharded.keys() == single.keys() == {"embeddings", "neighbours"}
    for stage, data in sharded.items():
        assert data == single[stage], f"{stage} differ between 2 shards and 1 process"


def _stage_files(path: Path) -> dict[str, Any]:
    """The bytes of the store's embedding and neighbour files, and (slices, of how many) of
    the sets that were built in shards."""
    experiment = load_experiment(path)
    store = open_store(experiment.store.database_url, experiment.store.path, read_only=True)
    with store.session() as session:
        found: dict[str, Any] = {
            "embeddings": store.path(session.scalars(select(EmbeddingSet.file)).one()).read_bytes(),
            "neighbours": store.path(session.scalars(select(NeighbourSet.file)).one()).read_bytes(),
        }
        counts = session.execute(
            select(func.count(), func.max(StageShard.shards)).group_by(
                StageShard.embedding_set_id, StageShard.neighbour_set_id
            )
        ).all()
    found["shards"] = sorted(tuple(row) for row in counts)
    return found


@pytest.mark.e2e
def test_two_processes_killed_resume_as_one_to_the_weights_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """SIGKILL to every process of a 2-process run after its first checkpoint; the same
    command with one process finishes it into the same MLflow run. Its weights equal those of
    an uninterrupted 2-process run to 1e-4 (absolute; lr 3e-3): the steps after the resume
    may sum their gradients in another order, and AdamW magnifies such differences where a
    gradient is near 0 (measured here: identical; 6e-6 after three steps in
    ``tests/training/test_distributed.py``)."""
    tables = {"train": {"steps": 30, "checkpoint_every": 5, "log_every": 5}}
    killed = tiny_experiment(tmp_path / "killed", **tables)
    whole = tiny_experiment(tmp_path / "whole", **tables)

    process = subprocess.Popen([*COMMAND, str(killed), "--nproc", "2"], env=_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)  # fmt: skip
    checkpoint = checkpoint_path(folder_of(killed))
    deadline = time.monotonic() + HANG_S
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the launcher, torchrun and both processes
    process.wait()
    first = load_checkpoint(checkpoint)["step"]
    assert 0 < first < 30, "the kill came too late to test a resume"
    (run,) = runs_of(killed)
    assert run.info.status == "RUNNING"

    _run(killed)  # one process now
    _run(whole, "--nproc", "2")
    (resumed,) = runs_of(killed)
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    final = load_checkpoint(checkpoint)
    expected = load_checkpoint(checkpoint_path(folder_of(whole)))
    assert final["step"] == expected["step"] == 30 and final["tokens"] == expected["tokens"]
    for name, tensor in expected["model"].items():
        torch.testing.assert_close(final["model"][name], tensor, rtol=0, atol=1e-4, msg=name)
    steps = [step for step, _ in _history(killed, "train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 30


def _torch_log(line: str) -> bool:
    """A line of torchrun's own log (``W1206 16:24:18.806000 123 torch/...``)."""
    return re.match(r"[IWE]\d{4} \d\d:\d\d:\d\d", line) is not None


@pytest.mark.e2e
def test_an_error_of_process_0_alone_is_one_line_and_exit_2_under_nproc(tmp_path: Path) -> None:
    """An error only process 0 meets (ingest finds no file) is its one line and exit 2, as in
    one process: the other process, whose wait breaks when process 0 leaves, stops quietly,
    and the launcher adds no torchrun traceback (it did: 80 lines, exit code 1)."""
    path = tiny_experiment(tmp_path)
    empty = tmp_path / "corpus"
    for file in empty.iterdir():
        file.unlink()
    done = subprocess.run([*COMMAND, str(path), "--nproc", "2"], env=_env(),
                          capture_output=True, text=True, timeout=HANG_S)  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if not _torch_log(line)]
    assert lines == [
        f"Error: [corpus] include: no file under {empty} matches ['**/*.py', '**/*.txt']"
    ]


def _left(marker: str, timeout: float = 60) -> list[int]:
    """The processes whose command line holds ``marker`` once they have had ``timeout``
    seconds to go."""
    deadline = time.monotonic() + timeout
    while True:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        found.append(int(entry.name))
                except OSError:
                    continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.e2e
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "group"),
    [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGKILL, True)],
    ids=["SIGKILL", "SIGTERM", "SIGKILL-group"],
)
def test_a_killed_nproc_launcher_leaves_no_process_training(
    tmp_path: Path, signum: signal.Signals, group: bool
) -> None:
    """SIGKILL or SIGTERM to `run --nproc 2` alone (a scheduler's kill, `kill PID`) stops
    torchrun and both processes. They went on training without it, and the same command
    started again then trained the same run beside them. SIGKILL to the launcher's process
    group kills torchrun with it, outright: the training processes, in sessions of their own,
    notice that their parent is gone and stop too."""
    path = tiny_experiment(tmp_path, train={"steps": 100_000, "checkpoint_every": 5})
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:  # a file: processes left behind would hold a pipe open
        process = subprocess.Popen([*COMMAND, str(path), "--nproc", "2"], env=_env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr,
                                   start_new_session=True)  # fmt: skip
    try:
        checkpoint = checkpoint_path(folder_of(path))
        deadline = time.monotonic() + HANG_S
        while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()[-3000:]
        if group:
            os.killpg(process.pid, signum)  # the launcher and torchrun, not the workers
        else:
            process.send_signal(signum)  # the launcher alone
        process.wait(timeout=HANG_S)
        assert _left(str(path)) == []
        if group:  # each process says why it stops; none ends in a traceback (a collective
            # whose peer stopped first broke before the watchdog saw torchrun gone)
            said = log.read_text()
            assert said.count("Error: torchrun (pid ") == 1, said[-3000:]  # by process 0
            assert "Traceback" not in said, said[-3000:]
        if signum == signal.SIGTERM:
            assert process.returncode == 128 + signal.SIGTERM
            assert log.read_text().splitlines()[-1] == (
                "Error: stopped by SIGTERM; run the same command again: a run resumes from its "
                "last checkpoint and what the retrieval stages stored is kept"
            )
    finally:
        for pid in _left(str(path), timeout=0):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.wait()

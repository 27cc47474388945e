"""Several processes opening one new SQLite tracking database at once (runs started together
on a fresh ``mlflow.db``): each migration is MLflow's, so they must take turns."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from contextlib import closing
from pathlib import Path

from retro_platform.tracking.client import open_client

REPO = Path(__file__).resolve().parents[2]

PROCESSES = 4


def _open(uri: str, barrier, results) -> None:  # a spawned process
    import os

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow  # noqa: F401  (imported before the barrier: the race is the opening)

    from retro_platform.tracking.client import open_client

    barrier.wait()
    try:
        client = open_client(uri)
        client.search_experiments()
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc(limit=3))


def test_processes_that_open_a_new_sqlite_tracking_store_at_once_all_get_it(
    tmp_path: Path,
) -> None:
    """Before, two of three such runs failed: alembic's "Online migration expected to match
    one row" as a traceback, and "duplicate column name: step" as a TrackingError."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    workers = [context.Process(target=_open, args=(uri, barrier, results))
               for _ in range(PROCESSES)]  # fmt: skip
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert outcomes == ["ok"] * PROCESSES, "\n".join(o for o in outcomes if o != "ok")
    assert (tmp_path / "mlflow.db.lock").exists()


OPEN = """
import sys
from retro_platform.tracking.client import open_client
open_client(sys.argv[1])
"""


def _migrating(path: Path) -> bool:
    """Whether alembic is in the middle of a migration of the SQLite database ``path``: it
    has copied a table to change it (a batch migration, a step at a time on SQLite)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0)) as db:
            copies = "SELECT name FROM sqlite_master WHERE name GLOB '_alembic_tmp_*'"
            return bool(db.execute(copies).fetchall())
    except sqlite3.Error:
        return False


def test_a_process_killed_while_creating_the_database_leaves_one_that_opens(
    tmp_path: Path,
) -> None:
    """Before, a run killed during the seconds MLflow takes to migrate a new ``mlflow.db``
    left it half-migrated, and every later run stopped at "table jobs already exists"."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.Popen([sys.executable, "-c", OPEN, uri], env=env)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any(_migrating(path) for path in tmp_path.glob("*mlflow.db*")):
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the process ended before the kill"

    client = open_client(uri)  # a new one, or the whole one: never half of one
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mlflow.db", "mlflow.db.lock"]

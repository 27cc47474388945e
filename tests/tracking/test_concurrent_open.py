"""Several processes opening one new SQLite tracking database at once (runs started together
on a fresh ``mlflow.db``): each migration is MLflow's, so they must take turns."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

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

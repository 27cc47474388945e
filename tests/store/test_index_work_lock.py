"""The index-work lock (:func:`working_on_index`, :func:`nobody_working`) on SQLite and
PostgreSQL: shared holders work side by side, the exclusive question is answered at once, and a
killed holder's lock goes with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from retro_platform.store.database import Store, open_store
from retro_platform.store.locks import (
    LOCK_KEEPALIVES,
    lock_connection,
    nobody_working,
    working_on_index,
)
from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parents[2]

#: Opens the store, holds corpus 1's index-work lock shared, says so, and sleeps.
HOLDER = """
import sys, time
from retro_platform.store.database import open_store
from retro_platform.store.locks import working_on_index
with open_store(sys.argv[1], sys.argv[2]) as store, working_on_index(store, 1):
    print("held", flush=True)
    time.sleep(600)
"""


def other(store: Store, tmp_path: Path) -> Store:
    """A second store object on the same database and folder: another connection, another
    open file, as another process has."""
    return open_store(store.engine.url.render_as_string(hide_password=False), tmp_path / "files")


def test_shared_holders_work_side_by_side_and_keep_the_question_false(
    store: Store, tmp_path: Path
) -> None:
    with other(store, tmp_path) as second:
        with nobody_working(store, 1) as nobody:
            assert nobody  # no one holds it
        with working_on_index(store, 1), working_on_index(second, 1):  # both at once
            with nobody_working(second, 1) as nobody:
                assert not nobody
            with nobody_working(store, 2) as nobody:
                assert nobody  # another corpus's lock
        with nobody_working(second, 1) as nobody:
            assert nobody  # released
            with nobody_working(store, 1) as again:
                assert not again  # one question at a time: the second is told no


def test_a_killed_holders_lock_goes_with_it(store: Store, tmp_path: Path) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(tmp_path / "files")],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with nobody_working(store, 1) as nobody:
            assert not nobody
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(HANG_S)
        deadline = time.monotonic() + HANG_S
        while True:  # PostgreSQL ends the session when it sees the connection closed
            with nobody_working(store, 1) as nobody:
                if nobody or time.monotonic() > deadline:
                    break
            time.sleep(0.05)
        assert nobody
    finally:
        holder.kill()
        holder.wait(HANG_S)


@pytest.mark.postgres
def test_a_lock_connection_asks_the_server_for_keepalives(
    postgres_url: str, tmp_path: Path
) -> None:
    """A lost machine closes no connection: without keepalives the server held its session
    locks (the index-work lock, build locks) for the kernel's two hours; with them, about two
    minutes. On a TCP connection the server takes the settings as asked."""
    with open_store(postgres_url, tmp_path / "files") as store:
        connection = lock_connection(store)
        try:
            settings = {
                name: connection.scalar(
                    text("SELECT setting FROM pg_settings WHERE name = :name"), {"name": name}
                )
                for name in LOCK_KEEPALIVES
            }
        finally:
            connection.invalidate()
            connection.close()
    assert settings == {name: str(value) for name, value in LOCK_KEEPALIVES.items()}


def test_a_worker_waiting_behind_one_that_works_alone_says_so(store: Store, tmp_path: Path) -> None:
    """A process that works alone (index --rebuild, store prune) holds the lock exclusively;
    an index started meanwhile waits for it, and says so (before, in silence: for as long as
    a rebuild lasts)."""
    import threading

    lines: list[str] = []
    held = threading.Event()
    with other(store, tmp_path) as second:
        with nobody_working(store, 1) as nobody:
            assert nobody

            def work() -> None:
                with working_on_index(second, 1, lines.append):
                    held.set()

            worker = threading.Thread(target=work, daemon=True)
            worker.start()
            deadline = time.monotonic() + 30  # the line comes at once, before the wait
            while not lines and worker.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not held.is_set()
            assert lines == [
                "corpus 1: another process works on its index alone (index --rebuild, "
                "--reembed or --recompute-neighbours, store prune, or a shard finishing a "
                "stopped one's work): waiting for it"
            ]
        worker.join(HANG_S)
        assert held.is_set() and len(lines) == 1
        with working_on_index(second, 1, lines.append):  # free: nothing said
            pass
        assert len(lines) == 1

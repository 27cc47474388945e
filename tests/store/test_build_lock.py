"""The build lock (:func:`building_alone`) on SQLite and PostgreSQL: a second builder of the
same result says so and waits, goes on once the first lets go or is killed, and other results'
builders are not held up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from retro_platform.store.database import Store
from retro_platform.store.locks import building_alone
from retro_platform.store.models import EmbeddingSet, VectorIndex
from tests.limits import HANG_S

ROOT = Path(__file__).resolve().parents[2]

#: Opens the store, holds the build lock of embedding set 7, says so, and sleeps.
HOLDER = """
import sys, time
from retro_platform.store.database import open_store
from retro_platform.store.locks import building_alone
from retro_platform.store.models import EmbeddingSet
with open_store(sys.argv[1], sys.argv[2]) as store:
    with building_alone(store, EmbeddingSet, 7, "embeddings 7"):
        print("held", flush=True)
        time.sleep(600)
"""

WAITING = "embeddings 7 is being built by another process: waiting for it"


def until(condition, what) -> None:
    deadline = time.monotonic() + HANG_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_a_second_builder_waits_until_the_first_is_killed(store: Store, tmp_path: Path) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, str(tmp_path / "files")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    logs: list[str] = []
    got = threading.Event()

    def second() -> None:
        with building_alone(store, EmbeddingSet, 7, "embeddings 7", logs.append):
            got.set()

    thread = threading.Thread(target=second)
    try:
        assert holder.stdout.readline().strip() == "held"
        thread.start()
        until(lambda: logs, "the second builder said nothing")
        assert logs == [WAITING]
        time.sleep(0.3)
        assert not got.is_set()  # still waiting
        # another set, another table: nobody waits
        with (
            building_alone(store, EmbeddingSet, 8, "embeddings 8", logs.append),
            building_alone(store, VectorIndex, 7, "index 7", logs.append),
        ):
            assert logs == [WAITING]
        os.kill(holder.pid, signal.SIGKILL)
        thread.join(HANG_S)
        assert got.is_set()  # the killed holder's lock went with it
    finally:
        holder.kill()
        holder.wait(HANG_S)
        thread.join(HANG_S)


def test_a_free_lock_says_nothing_and_yields_the_stored_row(store: Store) -> None:
    logs: list[str] = []
    with building_alone(store, EmbeddingSet, 7, "embeddings 7", logs.append) as row:
        assert row is None  # no such set: what is stored, read once the lock is held
    with building_alone(store, EmbeddingSet, 7, "embeddings 7", logs.append):
        pass  # let go: taken again at once
    assert logs == []

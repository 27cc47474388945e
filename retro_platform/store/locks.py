"""One writer of a corpus's documents at a time, by the database's own locks.

Several ``retro-platform ingest`` processes may write one store at once (the same corpus from
two machines, or two experiments' corpora). Each decides what to add from what is stored, so
two of them deciding at once would both add the same document: the unique constraint on
``(corpus_id, external_id)`` then fails one of them. :func:`lock_corpus` makes that decision
and its writes one critical section per corpus, held until the transaction ends (commit,
rollback, or a killed process's connection closing), so the second writer sees the first's
documents as stored and skips them:

- PostgreSQL: ``pg_advisory_xact_lock`` on the corpus's id. It locks nothing but itself
  (readers and other corpora's writers go on) and writes no row.
- SQLite: the transaction begins with a write, which takes the database's one write lock at
  once (waiting up to the busy timeout), so what it then reads is what the last writer
  committed. SQLite has no finer lock: writers of other corpora wait too.

The second pair, :func:`working_on_index` and :func:`nobody_working`, tells whether any process
is at work on a corpus's index (embedding, merging, building, searching neighbours): every
``retro-platform index`` holds it shared while it works, and a shard waiting for others
(``--wait``) asks for it exclusively, without waiting, to learn that whoever should finish the
set is gone. It is held for as long as the work lasts, outside any transaction, and a killed
process's lock goes with it:

- PostgreSQL: a session-level advisory lock (``pg_advisory_lock_shared``) on a connection of
  its own, closed afterwards; a killed process's connection closes with it.
- SQLite: ``flock`` on a file in the store's folder (``locks/``), which the kernel releases when
  the process ends. Where ``flock`` does not exist (Windows) the lock is not taken and nobody
  ever counts as gone: shards wait as they did before.

:func:`building_alone` is the same kind of lock, exclusive, on one stored result while a process
builds it (an embedding or neighbour set, one of their slices, an index): a second process that
would build the same thing (two experiments sharing a corpus indexed at once, ``index`` without
``--shard`` beside running shards, one shard started twice) says so and waits, then finds it
built, or resumes it where a stopped holder left it. A process holds at most one at a time, so
they cannot deadlock. Where ``flock`` does not exist nothing is locked, as before.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.orm import Session

Record = TypeVar("Record")

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

#: The first key of every advisory lock this package takes: a corpus's writers (the second
#: key is the corpus id). Any other number would do; this one spells "RETR".
CORPUS_LOCKS = 0x52455452
#: The first key of the locks on a corpus's index work ("RETW").
INDEX_WORK_LOCKS = 0x52455457
#: The first key of the locks of the runs that read a corpus's index ("RETU").
INDEX_READ_LOCKS = 0x52455455
#: The first keys of the build locks (:func:`building_alone`), one per table ("RB" and a code).
BUILD_LOCKS = 0x52420000
_TABLE_CODES = {"embedding_sets": 1, "vector_indexes": 2, "neighbour_sets": 3, "stage_shards": 4}


def lock_corpus(session: Session, corpus_id: int) -> None:
    """Hold the write lock of ``corpus_id``'s documents until the session's transaction ends.

    Call it first in the transaction: on SQLite the lock is the transaction's first write.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :corpus)"),
            {"space": CORPUS_LOCKS, "corpus": corpus_id & 0x7FFFFFFF},
        )
    else:
        session.execute(
            text("UPDATE corpora SET version = version WHERE id = :corpus"), {"corpus": corpus_id}
        )


@contextmanager
def working_on_index(
    store: Any, corpus_id: int, log: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``corpus_id``'s index-work lock shared for the block: others may work beside this
    process, none can take over from it. While a process holds it exclusively (``index
    --rebuild``, ``store prune``, a waiting shard finishing what a stopped one left), say so
    through ``log`` and wait."""
    if _lockless(store):
        yield  # nothing to lock with (no one can hold it exclusively either)
        return
    waiting = (
        f"corpus {corpus_id}: another process works on its index alone (index --rebuild, "
        "--reembed or --recompute-neighbours, store prune, or a shard finishing a stopped "
        "one's work): waiting for it"
    )
    name = f"index-work-{corpus_id}"
    with _granted(
        store, INDEX_WORK_LOCKS, corpus_id, name, exclusive=False, waiting=waiting, log=log
    ):
        yield


@contextmanager
def reading_index(store: Any, corpus_id: int) -> Iterator[None]:
    """Hold ``corpus_id``'s index-read lock shared for the block: a training run, whose
    evaluation and samples read the corpus's index after its retrieval stages, keeps
    ``store prune`` off the corpus until it is done."""
    name = f"index-read-{corpus_id}"
    with _session_lock(store, INDEX_READ_LOCKS, corpus_id, name, exclusive=False):
        yield


@contextmanager
def nobody_reading(store: Any, corpus_id: int) -> Iterator[bool]:
    """True, with the index-read lock held exclusively for the block, when no run reads
    ``corpus_id``'s index; False at once when one does. Where no lock can be taken, True."""
    if _lockless(store):
        yield True
        return
    name = f"index-read-{corpus_id}"
    with _session_lock(
        store, INDEX_READ_LOCKS, corpus_id, name, exclusive=True, wait=False
    ) as free:
        yield free


@contextmanager
def nobody_working(store: Any, corpus_id: int) -> Iterator[bool]:
    """True, with the lock held exclusively for the block, when no process is at work on
    ``corpus_id``'s index; False at once when one is (or where the lock cannot be taken)."""
    with _session_lock(
        store, INDEX_WORK_LOCKS, corpus_id, f"index-work-{corpus_id}", exclusive=True, wait=False
    ) as held:
        yield held


@contextmanager
def working_alone(store: Any, corpus_id: int) -> Iterator[bool]:
    """Hold ``corpus_id``'s index-work lock exclusively for the block if no process is at work
    on its index: True; False at once when one is. For work that starts sets over (``index
    --rebuild``), which must not run under another process's feet. Where no lock can be taken
    (no ``flock``), True: there is nothing to ask."""
    if _lockless(store):
        yield True
        return
    with nobody_working(store, corpus_id) as nobody:
        yield nobody


@contextmanager
def building_alone(
    store: Any,
    model: type[Record],
    row_id: int,
    what: str,
    log: Callable[[str], None] | None = None,
) -> Iterator[Record]:
    """Hold the build lock of one stored result (an embedding or neighbour set, one of their
    slices, an index) for the block, so that no two processes build it at once. If another
    process holds it, say so through ``log`` and wait. Yields the row as stored once the lock
    is held: the caller builds only what that says is left (nothing once it is ready)."""
    if _lockless(store):
        yield _stored(store, model, row_id)  # nothing to lock with: as before these locks
        return
    space = BUILD_LOCKS + _TABLE_CODES[model.__tablename__]
    waiting = f"{what} is being built by another process: waiting for it"
    name = build_lock_name(model, row_id)
    with _granted(store, space, row_id, name, exclusive=True, waiting=waiting, log=log):
        yield _stored(store, model, row_id)


def _lockless(store: Any) -> bool:
    """Whether no lock can be taken here: a SQLite store where ``flock`` does not exist."""
    return fcntl is None and store.engine.dialect.name != "postgresql"


@contextmanager
def _granted(
    store: Any,
    space: int,
    key: int,
    name: str,
    *,
    exclusive: bool,
    waiting: str,
    log: Callable[[str], None] | None,
) -> Iterator[None]:
    """Hold a lock for the block: at once when it is free, else after saying ``waiting``
    through ``log`` and waiting until it is granted."""
    with _session_lock(store, space, key, name, exclusive=exclusive, wait=False) as free:
        if free:
            yield
            return
    if log is not None:
        log(waiting)
    with _session_lock(store, space, key, name, exclusive=exclusive):
        yield


def _stored(store: Any, model: type[Record], row_id: int) -> Record:
    with store.session() as session:
        return session.get(model, row_id)


def build_lock_name(model: type[Record], row_id: int) -> str:
    """The name of a build lock (its file under ``locks/`` on SQLite)."""
    return f"build-{model.__tablename__}-{row_id}"


def remove_lock_file(store: Any, name: str) -> None:
    """Remove the SQLite lock file ``name`` of something finished for good. A process still
    waiting on it gets the old file's lock, and finds the work done when it looks."""
    if store.engine.dialect.name != "postgresql":
        store.path(f"locks/{name}.lock").unlink(missing_ok=True)


#: Server-side TCP keepalives of a lock's connection: idle seconds, seconds between probes,
#: probes. A process killed on its machine closes its connection at once; a machine that is
#: lost (powered off, cut from the network) does not, and without keepalives the server kept
#: its locks for as long as the kernel's default (two hours or more): the other shards waited.
#: With these the server drops the session, and the locks, about two minutes after the last
#: sign of life.
LOCK_KEEPALIVES = {"tcp_keepalives_idle": 60, "tcp_keepalives_interval": 10,
                   "tcp_keepalives_count": 6}  # fmt: skip


def lock_connection(store: Any) -> Any:
    """A connection of its own for PostgreSQL session locks: autocommit, and keepalives that
    let the server notice a lost machine (:data:`LOCK_KEEPALIVES`). Close it (invalidated, not
    pooled) to let its locks go."""
    connection = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    for name, value in LOCK_KEEPALIVES.items():  # no effect on a Unix socket, and harmless
        connection.execute(text(f"SET {name} = {int(value)}"))
    return connection


@contextmanager
def _session_lock(
    store: Any, space: int, key: int, name: str, *, exclusive: bool, wait: bool = True
) -> Iterator[bool]:
    """A lock held for a block, outside any transaction, that a killed process lets go: on
    PostgreSQL a session-level advisory lock ``(space, key)`` on a connection of its own, on
    SQLite ``flock`` on ``locks/<name>.lock``. Yields whether it is held (only a request with
    ``wait=False`` can be refused)."""
    if store.engine.dialect.name == "postgresql":
        keys = {"space": space, "key": key & 0x7FFFFFFF}
        kind = "" if exclusive else "_shared"
        call = f"pg_advisory_lock{kind}" if wait else f"pg_try_advisory_lock{kind}"
        connection = lock_connection(store)
        try:
            held = connection.scalar(text(f"SELECT {call}(:space, :key)"), keys)
            yield held is not False  # pg_advisory_lock returns void (None) once granted
        finally:
            # closed, not pooled: the session and every lock it holds end here
            connection.invalidate()
            connection.close()
        return
    if fcntl is None:
        yield wait
        return
    descriptor = _lock_file(store.path(f"locks/{name}.lock"))
    if descriptor is None:  # a store this process may only read, and nobody ever took it
        yield True
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(descriptor, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the flock


def _lock_file(path: Path) -> int | None:
    """A descriptor to ``flock`` the lock file ``path`` with, made if it is not there yet. On a
    store this process may only read (``store prune --dry-run``), the file opened for reading,
    which ``flock`` takes as well; None when it cannot be made: no process ever held that lock,
    since each holder makes the file first."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None

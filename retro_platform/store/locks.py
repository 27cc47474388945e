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
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

#: The first key of every advisory lock this package takes: a corpus's writers (the second
#: key is the corpus id). Any other number would do; this one spells "RETR".
CORPUS_LOCKS = 0x52455452
#: The first key of the locks on a corpus's index work ("RETW").
INDEX_WORK_LOCKS = 0x52455457


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
def working_on_index(store: Any, corpus_id: int) -> Iterator[None]:
    """Hold ``corpus_id``'s index-work lock shared for the block: others may work beside this
    process, none can take over from it."""
    with _index_work_lock(store, corpus_id, exclusive=False) as held:
        assert held  # a shared request waits until it is granted
        yield


@contextmanager
def nobody_working(store: Any, corpus_id: int) -> Iterator[bool]:
    """True, with the lock held exclusively for the block, when no process is at work on
    ``corpus_id``'s index; False at once when one is (or where the lock cannot be taken)."""
    with _index_work_lock(store, corpus_id, exclusive=True) as held:
        yield held


@contextmanager
def _index_work_lock(store: Any, corpus_id: int, *, exclusive: bool) -> Iterator[bool]:
    """A shared request waits; an exclusive one does not (it is only ever a question)."""
    if store.engine.dialect.name == "postgresql":
        keys = {"space": INDEX_WORK_LOCKS, "corpus": corpus_id & 0x7FFFFFFF}
        connection = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            if exclusive:
                held = connection.scalar(text("SELECT pg_try_advisory_lock(:space, :corpus)"), keys)
            else:
                connection.execute(text("SELECT pg_advisory_lock_shared(:space, :corpus)"), keys)
                held = True
            yield bool(held)
        finally:
            # closed, not pooled: the session and every lock it holds end here
            connection.invalidate()
            connection.close()
        return
    if fcntl is None:
        yield not exclusive
        return
    path = store.path(f"locks/index-work-{corpus_id}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB if exclusive else fcntl.LOCK_SH)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the flock

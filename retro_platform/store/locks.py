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
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

#: The first key of every advisory lock this package takes: a corpus's writers (the second
#: key is the corpus id). Any other number would do; this one spells "RETR".
CORPUS_LOCKS = 0x52455452


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

"""The one pattern of the stages that derive data from the store: embeddings, vector indexes,
neighbour sets.

A stage's result is a file under the store folder described by a row (a
:class:`~retro_platform.store.models.StageRecord`) that its fingerprint finds. The row is made
``building`` (:func:`get_or_create_stage`), the file is written, and the row turns ``ready``
(:func:`finish`, or :meth:`Progress.finish`); a stage whose row is ready and whose file is
there has nothing to do (:func:`is_ready`). A resumable stage
(:class:`~retro_platform.store.models.ResumableStageRecord`) writes its file's rows in order and
commits how many are ``done`` as it goes (:class:`Progress`), so a killed run resumes there.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retro_platform.store.fingerprints import short
from retro_platform.store.models import BUILDING, READY, ResumableStageRecord, StageRecord

#: Seconds between commits of progress (each costs a flush of the file and a transaction).
COMMIT_EVERY_S = 5.0

Record = TypeVar("Record", bound=StageRecord)


def stage_file(folder: str, key: str, suffix: str) -> str:
    """The file of the result whose fingerprint is ``key``, relative to the store folder."""
    return f"{folder}/{short(key)}{suffix}"


def find_stage(session: Session, model: type[Record], key: str) -> Record | None:
    """The row of ``model`` whose fingerprint is ``key``, or None."""
    return session.scalar(select(model).where(model.fingerprint == key))


def get_or_create_stage(
    session: Session, model: type[Record], key: str, **new_values: Any
) -> Record:
    """The row of ``model`` whose fingerprint is ``key``; if there is none, a new ``building``
    one made of ``new_values``, flushed so that it has its id. Of two processes that make it at
    the same moment (the shards of one set), the second finds the first's row."""
    row = find_stage(session, model, key)
    if row is None:
        try:
            with session.begin_nested():
                row = model(fingerprint=key, status=BUILDING, **new_values)
                session.add(row)
        except IntegrityError:
            row = find_stage(session, model, key)
            if row is None:
                raise
    return row


def is_ready(store: Any, row: StageRecord) -> bool:
    """Whether the row's result is finished: the row says ``ready`` and its file is there."""
    return row.status == READY and store.path(row.file).exists()


def restart(row: StageRecord, plugin: dict[str, str]) -> None:
    """Have the row's result built again, from its first row for a resumable stage, by
    ``plugin`` (``{name, distribution, version}``), which the row then records."""
    row.status = BUILDING
    row.plugin = plugin
    if isinstance(row, ResumableStageRecord):
        row.done = 0


def finish(store: Any, model: type[Record], row_id: int, **values: Any) -> Record:
    """Set ``values`` on the row and mark it ``ready``, in a transaction of its own; the row,
    readable after it."""
    with store.session() as session:
        row = session.get(model, row_id)
        for name, value in values.items():
            setattr(row, name, value)
        row.status = READY
        return row


class Progress:
    """Commits a resumable stage's progress: the count of rows ``done`` and the seconds spent,
    every :data:`COMMIT_EVERY_S` seconds and when it finishes.

    The file is flushed before each commit: SQL never says a row is done before it is on disk.
    """

    def __init__(
        self, store: Any, model: type[ResumableStageRecord], row_id: int, array: np.ndarray
    ) -> None:
        self.store, self.model, self.row_id, self.array = store, model, row_id, array
        self.last_commit = time.perf_counter()

    def update(self, done: int) -> None:
        """``done`` rows are written: commit that if the last commit is old enough."""
        if time.perf_counter() - self.last_commit >= COMMIT_EVERY_S:
            self._commit(done, BUILDING)

    def finish(self, done: int) -> None:
        """All ``done`` rows are written: commit that, and mark the row ``ready``."""
        self._commit(done, READY)

    def _commit(self, done: int, status: str) -> None:
        self.array.flush()
        now = time.perf_counter()
        with self.store.session() as session:
            row = session.get(self.model, self.row_id)
            row.done = done
            row.seconds = (row.seconds or 0.0) + now - self.last_commit
            row.status = status
        self.last_commit = now

"""Building one embedding or neighbour set in several processes at once: its slices.

``retro-platform index --shard i/N`` on ``N`` machines (or the ``N`` ranks of a ``torchrun``
job) each build one contiguous slice of a set's rows: shard ``i`` takes rows
``[i * per, (i + 1) * per)`` where ``per`` is a whole number of the stage's batches
(:func:`slice_bounds`). Each slice is a :class:`~retro_platform.store.models.StageShard` row
with its own ``done`` and its own file, so a killed process resumes its own slice only, and
no two processes ever write one file (safe on a store folder shared over NFS, where writes of
two machines to one page of a memory-mapped file can overwrite each other). The process whose
commit completes the last slice copies the slices into the set's file and removes them
(:func:`merge_slices`).

The layout is fixed by the first sharded run of a set. A later run given another ``N`` takes
the stored slices whose number is ``i`` modulo its ``N`` (:meth:`Shard.takes`): ``0/1``, a run
without ``--shard``, finishes every slice left, and a ``torchrun`` job resumed with fewer
processes shares out the slices of the earlier one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from retro_platform.atomic import atomic_destination
from retro_platform.disk import disk_errors, reserve
from retro_platform.errors import ConfigError, StoreError
from retro_platform.progress import progress as progress_bar
from retro_platform.store.arrays import open_array, resume_array
from retro_platform.store.fingerprints import fingerprint
from retro_platform.store.locks import build_lock_name, building_alone, remove_lock_file
from retro_platform.store.models import (
    BUILDING,
    READY,
    EmbeddingSet,
    NeighbourSet,
    ResumableStageRecord,
    StageShard,
)
from retro_platform.store.stages import Progress, finish

_SHARD_TEXT = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``): which slice a process builds."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard {self.index}/{self.count} does not exist: write i/N with N >= 1 and "
                f"0 <= i < N, e.g. 0/{max(self.count, 2)}"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` (as ``--shard`` takes it) as a shard; a one-line ``ConfigError`` if not."""
        match = _SHARD_TEXT.fullmatch(text)
        if match is None:
            raise ConfigError(
                f"--shard {text!r} is not i/N: give this process's shard and the number of "
                "shards, e.g. --shard 0/2 and --shard 1/2"
            )
        return cls(int(match[1]), int(match[2]))

    def takes(self, slice_number: int) -> bool:
        """Whether this shard builds the stored slice ``slice_number`` (of any layout)."""
        return slice_number % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


#: The one shard of a run that is not sharded: it takes every slice.
WHOLE = Shard(0, 1)


def slice_bounds(total: int, unit: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ``(start, stop)`` ranges covering ``range(total)``, each starting
    on a multiple of ``unit`` (the stage's batch) and as even as whole batches allow; the
    last ones may be empty when there are fewer batches than slices."""
    batches = -(-total // unit)
    per = -(-batches // count) * unit
    return [(min(i * per, total), min((i + 1) * per, total)) for i in range(count)]


@dataclass(frozen=True)
class ShardsLeft:
    """A set whose slices are not all built yet: what a shard's run says it leaves to others."""

    what: str  # "embeddings" or "neighbours"
    record_id: int
    shards: int
    left: tuple[int, ...]

    def summary(self, shard: Shard, then: str) -> str:
        """One line: this shard is done, which are left, and ``then`` what to run."""
        names = ", ".join(f"{i}/{self.shards}" for i in self.left)
        count = len(self.left)
        return (
            f"{self.what} {self.record_id}: shard {shard} done; {count} "
            f"shard{'s' if count != 1 else ''} left ({names}); {then}"
        )


def _parent_column(model: type[ResumableStageRecord]) -> Any:
    if model is EmbeddingSet:
        return StageShard.embedding_set_id
    if model is NeighbourSet:
        return StageShard.neighbour_set_id
    raise TypeError(f"{model.__name__} is not built in slices")


def stored_slices(
    session: Session, model: type[ResumableStageRecord], parent_id: int
) -> list[StageShard]:
    """The slices of the set ``parent_id`` of ``model``, in order; empty if it has none."""
    column = _parent_column(model)
    return list(
        session.scalars(select(StageShard).where(column == parent_id).order_by(StageShard.shard))
    )


def lay_out_slices(
    store: Any,
    model: type[ResumableStageRecord],
    parent: ResumableStageRecord,
    unit: int,
    count: int,
) -> list[StageShard]:
    """The set's slices: those stored, else ``count`` new ones aligned to ``unit``, each with a
    file beside the set's (``<file>.shard-<i>-of-<N>.npy``). Two processes that lay them out
    at once agree: the loser's insert fails on the unique constraint and it reads the
    winner's."""
    with store.session() as session:
        found = stored_slices(session, model, parent.id)
    if found:
        return found
    column = _parent_column(model).key
    stem = parent.file.removesuffix(".npy")
    try:
        with store.session() as session:
            for number, (start, stop) in enumerate(slice_bounds(parent.count, unit, count)):
                session.add(
                    StageShard(
                        fingerprint=fingerprint(set=parent.fingerprint, shard=number, of=count),
                        shard=number,
                        shards=count,
                        start=start,
                        count=stop - start,
                        done=0,
                        status=BUILDING,
                        file=f"{stem}.shard-{number}-of-{count}.npy",
                        plugin=parent.plugin,
                        **{column: parent.id},
                    )
                )
    except IntegrityError:
        pass  # another shard laid them out at the same moment
    with store.session() as session:
        return stored_slices(session, model, parent.id)


def drop_slices(
    store: Any, session: Session, model: type[ResumableStageRecord], parent_id: int
) -> None:
    """Forget the set's slices and remove their files and lock files (the set is built again
    from scratch, under the corpus's index-work lock held exclusively: no process waits on
    them)."""
    for row in stored_slices(session, model, parent_id):
        store.path(row.file).unlink(missing_ok=True)
        remove_lock_file(store, build_lock_name(StageShard, row.id))
        session.delete(row)


class SliceProgress(Progress):
    """:class:`~retro_platform.store.stages.Progress` of one slice, whose :meth:`finish` also
    says whether it completed the set."""

    def __init__(
        self,
        store: Any,
        model: type[ResumableStageRecord],
        parent_id: int,
        row_id: int,
        array: np.ndarray | None,
    ) -> None:
        super().__init__(store, StageShard, row_id, array)  # None: an empty slice, no file
        self.parent_model, self.parent_id = model, parent_id

    def finish(self, done: int) -> bool:  # type: ignore[override]
        """Mark the slice ready; True for the one commit that leaves no slice unfinished.

        The set's row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite has one writer at
        a time anyway), so of two slices finishing at once the second sees the first ready.
        """
        if self.array is not None:
            self.array.flush()
        now = time.perf_counter()
        with self.store.session() as session:
            session.execute(
                select(self.parent_model.id)
                .where(self.parent_model.id == self.parent_id)
                .with_for_update()
            )
            row = session.get(StageShard, self.row_id)
            row.done, row.status = done, READY
            row.seconds = (row.seconds or 0.0) + now - self.last_commit
            session.flush()
            column = _parent_column(self.parent_model)
            unfinished = session.scalar(
                select(func.count())
                .select_from(StageShard)
                .where(column == self.parent_id, StageShard.status != READY)
            )
        self.last_commit = now
        return unfinished == 0


#: ``fill(out, done, saved, bar)``: write a slice's rows ``done ..`` into ``out``, committing
#: ``saved`` and advancing ``bar`` as it goes.
SliceFiller = Callable[[np.ndarray, int, SliceProgress, Any], None]


def fill_slice(
    store: Any,
    model: type[ResumableStageRecord],
    set_id: int,
    piece: StageShard,
    row_shape: tuple[int, ...],
    dtype: Any,
    what: str,
    fix: str,
    desc: str,
    progress: bool | None,
    fill: SliceFiller,
) -> bool:
    """Build one slice into its own file: open it (resuming at its committed ``done``), run
    ``fill`` under a progress bar, and mark the slice ready. Returns whether finishing the
    slice completed the set (an empty slice has no file). ``row_shape``, ``dtype``, ``what``
    and ``fix`` are the set file's, as :func:`~retro_platform.store.arrays.resume_array` takes
    them."""
    if piece.count == 0:
        return SliceProgress(store, model, set_id, piece.id, None).finish(0)
    shape = (piece.count, *row_shape)
    out, done = resume_array(store.path(piece.file), shape, dtype, piece.done, what, fix)
    saved = SliceProgress(store, model, set_id, piece.id, out)
    bar = progress_bar(
        total=piece.count,
        initial=done,
        unit="chunk",
        desc=f"{desc} {piece.shard}/{piece.shards}",
        enabled=progress,
    )
    with bar:
        fill(out, done, saved, bar)
    return saved.finish(piece.count)


def merge_slices(
    store: Any,
    slices: list[StageShard],
    path: Path,
    shape: tuple[int, ...],
    dtype: type,
    what: str,
    fix: str,
) -> None:
    """Copy the finished ``slices`` into the set's file at ``path`` (written under a temporary
    name and renamed: a killed merge leaves the slices as they were, and the next run merges
    again), then remove the slice files."""
    if not slices or sum(row.count for row in slices) != shape[0]:
        raise StoreError(f"the slices of {what} file {path} do not cover its rows; run: {fix}")
    if path.exists() and any(not store.path(row.file).exists() for row in slices if row.count):
        return  # another process merged them at the same moment (it removes slices last)
    then = "it resumes: the finished slices are kept"
    with atomic_destination(path, then) as partial:
        with disk_errors(path, then):
            merged = np.lib.format.open_memmap(partial, "w+", dtype, shape)
            reserve(partial, then)
        for row in slices:
            if row.count:  # an empty slice has no file
                part = open_array(store.path(row.file), (row.count, *shape[1:]), dtype, what, fix)
                merged[row.start : row.start + row.count] = part
        with disk_errors(path, then):
            merged.flush()
        del merged
    for row in slices:
        store.path(row.file).unlink(missing_ok=True)
        remove_lock_file(store, build_lock_name(StageShard, row.id))


def finish_merged(
    store: Any,
    model: type[ResumableStageRecord],
    row: ResumableStageRecord,
    slices: list[StageShard],
) -> None:
    """Mark a set whose slices are merged ready: every row done, the slices' seconds summed."""
    finish(store, model, row.id, done=row.count, seconds=sum(p.seconds or 0.0 for p in slices))


def _build_alone(
    store: Any,
    row: StageShard,
    build: Callable[[StageShard], bool],
    what: str,
    log: Callable[[str], None] | None,
) -> bool:
    """``build(row)`` under the slice's build lock: if another process is building it, wait,
    then build only what it left. True where ``build`` completed the set, or where the other
    process finished the slice (it may have completed the set and died before merging: the
    caller's last look at the slices, and the merge's own lock, decide)."""
    slice_name = f"{what}: slice {row.shard}/{row.shards}"
    with building_alone(store, StageShard, row.id, slice_name, log) as now:
        return True if now.status == READY else build(now)


def run_slices(
    store: Any,
    model: type[ResumableStageRecord],
    parent_id: int,
    slices: list[StageShard],
    shard: Shard,
    build: Callable[[StageShard], bool],
    what: str,
    log: Callable[[str], None] | None,
) -> tuple[list[StageShard], bool]:
    """Build the unfinished slices that ``shard`` takes, one after the other, with ``build``
    (which returns whether finishing the slice completed the set).

    Returns the slices as stored now, and whether this process is the one to merge them: it
    completed the set, or found every slice finished when it started (the process that
    completed it was killed before it merged).
    """
    layout = slices[0].shards
    taken = ", ".join(
        f"{row.shard}/{layout}" for row in slices if shard.takes(row.shard) and row.status != READY
    )
    if layout != shard.count and taken and log is not None:  # nothing left: nothing to say
        log(
            f"{what}: an earlier run split them into {layout} shards; "
            f"{'this run' if shard.count == 1 else f'shard {shard}'} builds those of them "
            f"left: {taken}"
        )
    finished_before = all(row.status == READY for row in slices)
    completed = False
    for row in slices:
        if shard.takes(row.shard) and row.status != READY:
            completed |= _build_alone(store, row, build, what, log)
    with store.session() as session:
        now = stored_slices(session, model, parent_id)
    merging = all(row.status == READY for row in now) and (completed or finished_before)
    return now, merging

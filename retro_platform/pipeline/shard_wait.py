"""A shard that waits for the others: ``retro-platform index EXP --shard i/N --wait``.

Without ``--wait`` a shard builds what it can and exits: one whose embedding slice is done
before the index exists must be started again to search its slice of the neighbours. With it,
the shard polls the store, read-only, until what it needs next is there (the index, which the
shard that completes the embeddings builds; then the merged neighbours) and carries on, so one
command per machine builds everything, and every shard ends with the finished result. Polls
only read: merging and building stay with the shard that completes a set, so a waiting shard
never races it.

Unless that shard is gone. When every slice of what it waits for is finished (nothing is left
for any shard but the merge, or the index build) and no process holds the corpus's index-work
lock (:mod:`retro_platform.store.locks`: every ``index`` holds it shared while it works, and a
killed one's lock goes with it), the process that should finish the set was stopped: the
waiting shard takes the lock exclusively and finishes the set itself. So a shard killed while
merging or building does not leave the others waiting for ever. A shard stopped before its own
slice was finished is not replaced that way (its slice is its machine's share of the work):
once nobody has been at work for a minute, the waiting shard names it, to be started again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import find_corpus_id
from retro_platform.embeddings.embed import EmbeddingFile, embed_corpus, embedding_fingerprint
from retro_platform.errors import StoreError
from retro_platform.index.build import build_index, open_run_index
from retro_platform.neighbours.compute import compute_neighbours, neighbours_fingerprint
from retro_platform.pipeline import IndexResult, Shard, ShardResult, finished_index, run_index
from retro_platform.store.locks import nobody_working
from retro_platform.store.models import READY, Corpus, EmbeddingSet, NeighbourSet
from retro_platform.store.shards import ShardsLeft, stored_slices
from retro_platform.store.stages import find_stage, is_ready

#: Seconds between two looks at the store while waiting.
POLL_S = 5.0
#: Seconds with unfinished slices and no process at work before the wait names the shards to
#: start again (a shard started a little later than this one is not taken for a stopped one).
HINT_AFTER_S = 60.0


def run_index_waiting(
    experiment: Experiment,
    store: Any,
    shard: Shard,
    *,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
    hint_after_s: float = HINT_AFTER_S,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> IndexResult:
    """``run_index(shard=shard)``, run again each time what the shard waits for is ready, until
    the whole index is built: the finished :class:`IndexResult`. A ``StoreError`` after
    ``timeout_s`` seconds of waiting (None: no limit); what was built stays stored. Once no
    process has been at work on the corpus for ``hint_after_s`` while slices are unfinished,
    one line names the shards to start again."""
    started = time.monotonic()
    result = run_index(experiment, store, shard=shard, progress=progress, log=log)
    corpus_id = find_corpus_id(experiment, store)
    while isinstance(result, ShardResult):
        awaited = "neighbours" if result.neighbours is not None else "index"
        log(f"{result.summary(experiment.hint_file)}\n{_waiting_line(shard, awaited, poll_s)}")
        hinted, idle_since = (), None
        while (standing := _state(experiment, store, corpus_id, awaited)).state != "ready":
            if standing.state == "merge left" and _take_over(
                experiment, store, corpus_id, shard, awaited, progress, log
            ):
                continue  # finished here: ready now
            left = standing.shards_left(shard)
            if left and left != hinted:
                # a shard not started yet looks like a stopped one: say so after a while
                idle = _nobody_at_work(store, corpus_id)
                idle_since = (idle_since or time.monotonic()) if idle else None
                if idle and time.monotonic() - idle_since >= hint_after_s:
                    log(_restart_hint(experiment, shard, awaited, left))
                    hinted = left
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise StoreError(
                    f"shard {shard} gave up after waiting {timeout_s:g} s for the "
                    f"{_WHAT[awaited]}; what it built is stored: once no shard is running, "
                    f"run: retro-platform index {experiment.hint_file}"
                )
            time.sleep(poll_s)
        result = run_index(experiment, store, shard=shard, progress=progress, log=log)
    return result


def _take_over(
    experiment: Experiment,
    store: Any,
    corpus_id: int,
    shard: Shard,
    awaited: str,
    progress: bool | None,
    log: Callable[[str], None],
) -> bool:
    """Merge (and for the index, build) what the process that completed the set left, if no
    process is at work on the index: True once done, False while one is."""
    with nobody_working(store, corpus_id) as nobody:
        if not nobody:
            return False
        log(
            f"shard {shard}: every slice is finished and no process is at work on the "
            f"{awaited} (the one that completed them was stopped): this shard finishes it"
        )
        # with the shard: every slice is finished, so each stage merges its slices (or reuses
        # the merged set). The index is built here; this shard's own neighbours are searched
        # afterwards, beside the other shards, not under the exclusive lock.
        embeddings = embed_corpus(
            experiment, store, corpus_id, shard=shard, progress=progress, log=log
        )
        assert isinstance(embeddings, EmbeddingFile), embeddings
        index = finished_index(experiment, store)
        if index is None:
            build_index(experiment, store, corpus_id, embeddings, progress=progress, log=log)
            return True
        retriever = open_run_index(experiment, index)
        neighbours = compute_neighbours(
            experiment, store, corpus_id, embeddings, index, retriever,
            shard=shard, progress=progress, log=log,
        )  # fmt: skip
        assert not isinstance(neighbours, ShardsLeft), neighbours
    return True


_WHAT = {
    "index": "index (the shard that completes the embeddings builds it)",
    "neighbours": "other shards' neighbours",
}


def _waiting_line(shard: Shard, awaited: str, poll_s: float) -> str:
    return (
        f"shard {shard}: waiting for the {_WHAT[awaited]}, looking every {poll_s:g} s; "
        "Ctrl-C stops waiting and keeps what is built"
    )


@dataclass(frozen=True)
class _Standing:
    """Where what a waiting shard needs stands: ``"ready"`` (the index, or the merged
    neighbours as well, stored); ``"merge left"`` (every slice of the set is finished, so what
    is left is the merge, and for the index the build, which no shard's own work will do); else
    ``"waiting"``, with the numbers of the set's slices that are not finished."""

    state: str
    unfinished: tuple[int, ...] = ()

    def shards_left(self, shard: Shard) -> tuple[int, ...]:
        """The shards of ``shard``'s layout (``i`` of its ``N``) that build an unfinished
        slice: a layout stored by a run of another ``N`` is shared out modulo ``N``."""
        return tuple(sorted({number % shard.count for number in self.unfinished}))


def _state(experiment: Experiment, store: Any, corpus_id: int, awaited: str) -> _Standing:
    """Where what a waiting shard needs stands, read only (see :class:`_Standing`)."""
    index = finished_index(experiment, store)
    with store.session() as session:
        if awaited == "index":
            if index is not None:
                return _Standing("ready")
            corpus = session.get(Corpus, corpus_id)
            row = find_stage(session, EmbeddingSet, embedding_fingerprint(experiment, corpus))
        else:
            if index is None:
                return _Standing("waiting")
            row = find_stage(session, NeighbourSet, neighbours_fingerprint(experiment, index))
            if row is not None and is_ready(store, row):
                return _Standing("ready")
        if row is None:
            return _Standing("waiting")
        if row.status == READY:
            return _Standing("merge left")  # merged: only the index is left
        slices = stored_slices(session, type(row), row.id)
        unfinished = tuple(piece.shard for piece in slices if piece.status != READY)
        if slices and not unfinished:
            return _Standing("merge left")
        return _Standing("waiting", unfinished)


def _nobody_at_work(store: Any, corpus_id: int) -> bool:
    """Whether no process holds the corpus's index-work lock (asked, then let go at once)."""
    with nobody_working(store, corpus_id) as nobody:
        return nobody


def _restart_hint(experiment: Experiment, shard: Shard, awaited: str, left: tuple[int, ...]) -> str:
    """One line for a wait that nothing is working towards: which shards to start (again)."""
    what = "embeddings" if awaited == "index" else "neighbours"
    names = ", ".join(f"{i}/{shard.count}" for i in left)
    first = f"retro-platform index {experiment.hint_file} --shard {left[0]}/{shard.count}"
    return (
        f"shard {shard}: no process is at work on this corpus, and the {what} of shard"
        f"{'s' if len(left) > 1 else ''} {names} are unfinished: if one was stopped, start it "
        f"again ({first}{' and so on' if len(left) > 1 else ''}); this shard keeps waiting"
    )

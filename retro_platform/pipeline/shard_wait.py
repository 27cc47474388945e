"""A shard that waits for the others: ``retro-platform index EXP --shard i/N --wait``.

Without ``--wait`` a shard builds what it can and exits: one whose embedding slice is done
before the index exists must be started again to search its slice of the neighbours. With it,
the shard polls the store, read-only, until what it needs next is there (the index, which the
shard that completes the embeddings builds; then the merged neighbours) and carries on, so one
command per machine builds everything, and every shard ends with the finished result. Polls
only read: merging and building stay with the shard that completes a set, so a waiting shard
never races it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from retro_platform.config import Experiment
from retro_platform.errors import StoreError
from retro_platform.neighbours.compute import neighbours_fingerprint
from retro_platform.pipeline import IndexResult, Shard, ShardResult, finished_index, run_index
from retro_platform.store.models import NeighbourSet
from retro_platform.store.stages import find_stage, is_ready

#: Seconds between two looks at the store while waiting.
POLL_S = 5.0


def run_index_waiting(
    experiment: Experiment,
    store: Any,
    shard: Shard,
    *,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = print,
) -> IndexResult:
    """``run_index(shard=shard)``, run again each time what the shard waits for is ready, until
    the whole index is built: the finished :class:`IndexResult`. A ``StoreError`` after
    ``timeout_s`` seconds of waiting (None: no limit); what was built stays stored."""
    started = time.monotonic()
    result = run_index(experiment, store, shard=shard, progress=progress, log=log)
    while isinstance(result, ShardResult):
        awaited = "neighbours" if result.neighbours is not None else "index"
        log(f"{result.summary(experiment.hint_file)}\n{_waiting_line(shard, awaited, poll_s)}")
        while not _ready(experiment, store, awaited):
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                raise StoreError(
                    f"shard {shard} gave up after waiting {timeout_s:g} s for the "
                    f"{_WHAT[awaited]}; what it built is stored: once no shard is running, "
                    f"run: retro-platform index {experiment.hint_file}"
                )
            time.sleep(poll_s)
        result = run_index(experiment, store, shard=shard, progress=progress, log=log)
    return result


_WHAT = {
    "index": "index (the shard that completes the embeddings builds it)",
    "neighbours": "other shards' neighbours",
}


def _waiting_line(shard: Shard, awaited: str, poll_s: float) -> str:
    return (
        f"shard {shard}: waiting for the {_WHAT[awaited]}, looking every {poll_s:g} s; "
        "Ctrl-C stops waiting and keeps what is built"
    )


def _ready(experiment: Experiment, store: Any, awaited: str) -> bool:
    """Whether what a waiting shard needs is stored: the index (and so the embeddings), or the
    merged neighbours as well. Reads only."""
    index = finished_index(experiment, store)
    if awaited == "index" or index is None:
        return index is not None
    with store.session() as session:
        row = find_stage(session, NeighbourSet, neighbours_fingerprint(experiment, index))
        return row is not None and is_ready(store, row)

"""``faiss-ivf-ondisk``: an IVF index whose inverted lists stay on disk, memory-mapped.

For an index larger than memory. The vectors are clustered into ``nlist`` lists (k-means on a
sample of ``train_size`` vectors); each list's codes (the full vectors for ``codec = "flat"``,
one byte per dimension for ``"sq8"``) and ids live in a Faiss ``OnDiskInvertedLists`` file that
a search maps into memory, reading only the ``nprobe`` lists it scans. What the process holds is
the coarse quantizer (``nlist`` centroids) and each list's offset and size.

The saved index is a folder (``<key>.ivfdisk/``)::

    manifest.json       format; per shard its vector count and a checksum of a few lists' ids
    trained.index       the trained, empty IVF index (quantizer and codec): what new shards copy
    shard-000.index     shard 0's IVF header; its lists are in the file beside it:
    shard-000.ivfdata   shard 0's inverted lists (Faiss OnDiskInvertedLists)
    ...

Building reads the vectors in blocks of ``block_size`` (the core hands them as
:class:`~retro_platform.protocols.VectorRows`, rows of the memory-mapped embedding file), so the
build holds one block, the training sample and the quantizer, never every vector (:meth:`add`
reads the new ones the same way): each block
is filed under its lists by an in-memory copy of the trained index, whose lists are then
appended to the shard's lists file (in ``temp_dir``, until :meth:`save` copies it). With
``shards = N`` the vectors are split into N consecutive ranges, each its own on-disk IVF over
the one trained quantizer; a search asks every shard and merges their top k by score (Faiss
``IndexShards``), which gives what one unsharded index gives.

A loaded index is read-only: :meth:`add` and :meth:`remove` first copy its lists into a private
working folder (Faiss ``merge_from``: disk, not memory), so the file they were read from, an
earlier index version, never changes. :meth:`save` writes compact copies of the lists.
``nprobe`` is a search-time setting; ``block_size``, ``temp_dir``, ``prefetch_threads`` and
``resident_mib`` are runtime ones (they change no result). ``resident_mib`` bounds how much of
the mapped lists a search keeps in the process's RSS (:mod:`._resident`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import faiss
import numpy as np
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from retro_platform.default_plugins.retrievers import _resident
from retro_platform.default_plugins.retrievers._faiss import (
    _METRICS,
    ADD_BATCH,
    FaissOptions,
    _threads_for,
    as_matrix,
    check_k,
    check_vectors,
    configure_threads,
    list_count,
    one_thread,
    protocol_scores,
    read_index_file,
    search_index,
)
from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.hookspecs import hookimpl
from retro_platform.progress import progress
from retro_platform.protocols import PluginOptions, RelativePath, Retriever

PLUGIN = "faiss-ivf-ondisk"
#: What manifest.json's ``format`` says; a folder of another format is refused.
FORMAT = "faiss-ivf-ondisk/1"
MANIFEST = "manifest.json"
TRAINED = "trained.index"

#: The size of the lists file of a shard with no vectors.
EMPTY_LISTS_BYTES = 64

_CODECS = {"flat": "Flat", "sq8": "SQ8"}
#: Lists whose ids the manifest checks at load (a damaged or replaced lists file fails it).
CHECKED_LISTS = 16
#: The start of a working folder's name: ``retro-ivf-ondisk-<host>-<pid>-<random>``.
WORK_PREFIX = "retro-ivf-ondisk-"


def training_rows(n: int, size: int, seed: int) -> np.ndarray:
    """The sorted positions of at most ``size`` of ``n`` vectors, chosen by ``seed`` (the rows
    ``sample_rows`` of the other IVF retrievers picks), to read just those."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def shard_files(folder: Path, shard: int) -> tuple[Path, Path]:
    """The header and inverted-lists files of ``shard`` in an index folder."""
    return folder / f"shard-{shard:03d}.index", folder / f"shard-{shard:03d}.ivfdata"


class OnDiskOptions(FaissOptions):
    """``[retriever] name = "faiss-ivf-ondisk"``."""

    # a search-time setting: an index built earlier is searched with the current value
    search_options: ClassVar[frozenset[str]] = frozenset({"nprobe"})
    # changes only how much the build holds in memory, never the index it writes
    runtime_options: ClassVar[frozenset[str]] = frozenset(
        {"block_size", "temp_dir", "prefetch_threads", "resident_mib"}
    )

    nlist: int | Literal["auto"] = Field(
        "auto",
        description='inverted lists; "auto": about 4 * sqrt(n), at least 39 training vectors each',
    )
    codec: Literal["flat", "sq8"] = Field(
        "flat",
        description='what a list stores per vector: "flat" the exact vector (4 bytes a '
        'dimension), "sq8" one byte a dimension (scalar quantizer)',
    )
    nprobe: int = Field(32, ge=1, description="lists scanned per query")
    shards: int = Field(
        1, ge=1, le=1000, description="on-disk IVF indexes over consecutive ranges of vectors"
    )
    train_size: int = Field(
        131_072, ge=1, description="most vectors sampled (with `seed`) to train the lists"
    )
    seed: int = Field(0, description="seed of the training sample")
    block_size: int = Field(
        65_536, ge=1, description="vectors read and added at a time while building or adding"
    )
    prefetch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="threads that read the probed lists ahead of each search (Faiss's "
        "prefetch); 0: none, the scan reads them itself (on 2 cores with the lists in the page "
        "cache, Faiss's default of 32 halved the queries/s)",
    )
    resident_mib: int | None = Field(
        None,
        ge=1,
        description="most MiB of the mapped lists a search keeps in the process's RSS: the "
        "queries go in blocks whose probed lists fit, and each block's pages are dropped from "
        "the process after it (they stay in the page cache); unset: every page a search "
        "touched stays in RSS until the kernel needs the memory (up to the whole lists file). "
        "Linux only",
    )
    temp_dir: RelativePath | None = Field(
        None,
        description="where the lists are written while building or updating, before a save "
        "copies them into the store (default: the system's temporary folder, $TMPDIR); what a "
        "killed process left there is removed by the next build on the same machine",
    )

    @field_validator("resident_mib")
    @classmethod
    def _linux_only(cls, value: int | None) -> int | None:
        if value is not None and not _resident.SUPPORTED:
            raise PydanticCustomError(
                "linux_only",
                "needs Linux (madvise and /proc); leave it unset on {platform}",
                {"platform": sys.platform},
            )
        return value

    @field_validator("nlist", mode="before")
    @classmethod
    def _positive_or_auto(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and value >= 1):
            return value
        raise PydanticCustomError("positive_or_auto", 'must be "auto" or a positive whole number')


class FaissIVFOnDiskRetriever(Retriever):
    """IVF indexes (one per shard) whose inverted lists are memory-mapped files."""

    Options: ClassVar[type[PluginOptions]] = OnDiskOptions
    file_suffix: ClassVar[str] = ".ivfdisk"
    reads_in_blocks: ClassVar[bool] = True

    def __init__(self, options: Any, dimension: int) -> None:
        if not isinstance(dimension, int | np.integer) or dimension < 1:
            raise ConfigError(f"{PLUGIN} needs a positive vector dimension, got {dimension!r}")
        super().__init__(options, int(dimension))
        self._trained: Any = None  # the trained, empty IVF index
        self._shards: list[Any] = []  # one IndexIVF per shard, its lists an OnDiskInvertedLists
        self._merged: Any = None  # faiss.IndexShards over several shards
        self._list_costs: np.ndarray | None = None  # bytes of each list, summed over shards
        self._work: Path | None = None  # where lists being built or changed are written
        self._work_files = 0
        configure_threads()

    @property
    def metric(self) -> str:
        return self.options.metric

    def nlist_for(self, n: int) -> int:
        """The number of lists for ``n`` vectors (``ConfigError`` when too few to train them)."""
        return list_count(PLUGIN, n, self.options.nlist, self.options.train_size)

    # --- building ------------------------------------------------------------------------------

    def build(self, vectors: Any, ids: np.ndarray) -> None:
        ids = self._checked_ids(vectors, ids)
        n = len(ids)
        if len(np.unique(ids)) != n:
            raise ValueError("the ids given to build() are not unique")
        nlist = self.nlist_for(n)
        trained = faiss.index_factory(
            self.dimension, f"IVF{nlist},{_CODECS[self.options.codec]}", _METRICS[self.metric]
        )
        sample = self._matrix(vectors[training_rows(n, self.options.train_size, self.options.seed)])
        with _threads_for(sample.size):
            trained.train(sample)
        del sample
        shards = []
        bounds = np.linspace(0, n, self.options.shards + 1).round().astype(np.int64)
        with _add_bar(n) as bar:
            for number in range(self.options.shards):
                shard = _on_disk(trained, self._work_file(), [])  # an empty shard, ready to grow
                self._append_rows(shard, trained, vectors, ids, bounds[number : number + 2], bar)
                shards.append(shard)
        self._use(trained, shards)

    def add(self, vectors: Any, ids: np.ndarray) -> None:
        self._require_shards()
        ids = self._checked_ids(vectors, ids)
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self.stored_ids()).any():
            raise ValueError("the ids given to add() are not new and unique")
        if not len(ids):
            return
        # the newest range of ids, where an index grows: a copy of the last shard's lists in a
        # new file, which leaves a loaded index's file as it was, and the new vectors appended
        # to it block by block, as a build does (the core hands them as VectorRows)
        last = self._shards[-1]
        grown = _on_disk(self._trained, self._work_file(), [last.invlists])
        with _add_bar(len(ids)) as bar:
            self._append_rows(grown, self._trained, vectors, ids, (0, len(ids)), bar)
        self._shards[-1] = grown
        self._forget(last)
        self._use(self._trained, self._shards)

    def _append_rows(
        self, shard: Any, trained: Any, vectors: Any, ids: np.ndarray, rows: Any, bar: Any
    ) -> None:
        """Append ``vectors[start:stop]`` (``rows``) under their ids to ``shard``'s lists, one
        block in memory at a time: each is filed under its lists by an in-memory copy of the
        ``trained`` index, whose lists are then appended to the shard's file."""
        start, stop = (int(row) for row in rows)
        for begin in range(start, stop, self.options.block_size):
            end = min(begin + self.options.block_size, stop)
            block = faiss.clone_index(trained)
            block.add_with_ids(self._matrix(vectors[begin:end]), ids[begin:end])
            _append(shard, block)
            del block
            if bar is not None:
                bar.update(end - begin)

    def _checked_ids(self, vectors: Any, ids: np.ndarray) -> np.ndarray:
        """``ids`` as int64, after checking ``vectors`` (an array or ``VectorRows``, never read
        whole here) is ``(n, dimension)`` and ``ids`` ``(n,)``."""
        n = len(vectors)
        if tuple(vectors.shape) != (n, self.dimension):
            raise ValueError(
                f"vectors must have shape (n, {self.dimension}), got {tuple(vectors.shape)}"
            )
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"expected {n} ids, got an array of shape {ids.shape}")
        return ids

    def remove(self, ids: np.ndarray) -> int:
        self._require_shards()
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        if not np.isin(ids, self.stored_ids()).any():
            return 0
        self._make_writable()
        removed = sum(_remove_entries(shard, ids) for shard in self._shards)
        self._sync()
        return removed

    # --- searching ------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._require_shards()
        searcher = self._merged if self._merged is not None else self._shards[0]
        queries = self._matrix(queries, "queries")
        if self.options.resident_mib is None or not len(queries):
            return search_index(searcher, queries, k, self.metric)
        return self._search_resident(queries, check_k(k))

    def _search_resident(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`search` keeping at most ``resident_mib`` of mapped lists in RSS
        (:mod:`._resident`)."""
        quantizer = faiss.downcast_index(self._trained.quantizer)
        centroid_distances, assigned = quantizer.search(queries, self._shards[0].nprobe)
        if self._list_costs is None:
            self._list_costs = sum(_list_bytes(shard) for shard in self._shards)

        def search_block(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            # a block of a few queries on one thread: Faiss threads a search over its queries,
            # and on shared cores a short parallel step waits for a descheduled thread
            # (measured on 2 busy cores: 25 ms a query, against 1.6 ms on one thread)
            with one_thread(len(rows) < 2 * faiss.omp_get_max_threads()):
                return search_rows(rows)

        def search_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if self._merged is not None:
                return self._merged.search(queries[rows], k)
            # one shard: its lists are known, no second coarse search
            return self._shards[0].search_preassigned(
                queries[rows], k, assigned[rows], centroid_distances[rows]
            )

        scores, ids = _resident.search_in_blocks(
            assigned,
            k,
            self._list_costs,
            self.options.resident_mib * 2**20,
            search_block,
            self._release_pages,
        )
        return protocol_scores(scores, ids, self.metric)

    def _release_pages(self) -> None:
        for shard in self._shards:
            lists = faiss.downcast_InvertedLists(shard.invlists)
            _resident.release(int(lists.ptr), int(lists.totsize))

    @property
    def size(self) -> int:
        return sum(int(shard.ntotal) for shard in self._shards)

    def stored_ids(self) -> np.ndarray:
        parts = [_list_ids(shard) for shard in self._shards]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def shard_indexes(self) -> list[Any]:
        """The Faiss ``IndexIVF`` of each shard, for tests, benchmarks and power users."""
        return list(self._require_shards())

    # --- files ----------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        shards = self._require_shards()
        folder = Path(path)
        if folder.is_file() and folder.stat().st_size == 0:
            folder.unlink()  # the empty file the core's atomic write gives: replaced by a folder
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._trained, str(folder / TRAINED))
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "dimension": self.dimension,
            "metric": self.metric,
            "shards": [],
        }
        for number, shard in enumerate(shards):
            header, lists_file = shard_files(folder, number)
            # a compact copy of the lists, one contiguous slot per list (Faiss merge_from)
            copy = _on_disk(self._trained, lists_file, [shard.invlists])
            faiss.write_index(copy, str(header))
            manifest["shards"].append(shard_record(copy))
            del copy  # unmaps the copy's lists
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    def load(self, path: Path) -> None:
        folder = Path(path)
        if not folder.exists():
            raise IndexFileError(f"index {folder} does not exist")
        if not folder.is_dir() or not (folder / MANIFEST).is_file():
            raise IndexFileError(
                f"index {folder} is not a {PLUGIN} index (a folder with {MANIFEST}, "
                f"{TRAINED} and shard files)"
            )
        manifest = _read_manifest(folder)
        trained = _read_index(folder / TRAINED, 0)
        self._check_kind(folder, trained)
        shards = []
        for number, expected in enumerate(manifest["shards"]):
            header, lists_file = shard_files(folder, number)
            if not lists_file.is_file():
                raise IndexFileError(f"index {folder} lacks its lists file {lists_file.name}")
            flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
            shard = _read_index(header, flags)
            self._check_kind(folder, shard)
            lists = faiss.downcast_InvertedLists(shard.invlists)
            if not isinstance(lists, faiss.OnDiskInvertedLists):
                raise IndexFileError(f"{header} does not keep its lists on disk")
            # the lists are mapped, not read: a short file would crash the first search
            if lists_file.stat().st_size < lists.totsize:
                raise IndexFileError(
                    f"{lists_file} is shorter than its header says (truncated or of another index)"
                )
            if shard_record(shard, expected["checked_lists"]) != expected:
                raise IndexFileError(
                    f"{lists_file} does not hold the ids {MANIFEST} lists (damaged or replaced)"
                )
            shards.append(shard)
        self._use(trained, shards)

    # --- helpers ---------------------------------------------------------------------------------

    def _check_kind(self, folder: Path, index: Any) -> None:
        if not isinstance(index, faiss.IndexIVF):
            raise IndexFileError(f"index {folder} holds a Faiss {type(index).__name__} index")
        check_vectors(index, f"index {folder}", self.dimension, self.metric)

    def _use(self, trained: Any, shards: list[Any]) -> None:
        self._trained = trained
        self._shards = shards
        for shard in shards:
            shard.nprobe = min(self.options.nprobe, shard.nlist)  # what a search scans
            lists = faiss.downcast_InvertedLists(shard.invlists)
            lists.prefetch_nthread = self.options.prefetch_threads
        self._sync()

    def _sync(self) -> None:
        """Rebuild the merging front over the shards (after their sizes changed)."""
        self._merged = None
        self._list_costs = None  # measured again at the next bounded search
        if len(self._shards) > 1:
            merged = faiss.IndexShards(self.dimension, False, False)  # shards run one by one:
            merged.metric_type = _METRICS[self.metric]  # each search is already multi-threaded
            for shard in self._shards:
                merged.add_shard(shard)
            self._merged = merged

    def _make_writable(self) -> None:
        """Copy the lists of loaded (read-only) shards into this instance's working folder."""
        shards = [
            shard
            if self._is_ours(shard)
            else _on_disk(self._trained, self._work_file(), [shard.invlists])
            for shard in self._shards
        ]
        self._use(self._trained, shards)

    def _is_ours(self, shard: Any) -> bool:
        """Whether a shard's lists are a file of this instance's working folder (writable)."""
        name = faiss.downcast_InvertedLists(shard.invlists).filename
        return self._work is not None and Path(name).parent == self._work

    def _forget(self, shard: Any) -> None:
        """Delete a replaced shard's lists file when it is one of ours (unmapped when the last
        reference to the shard goes)."""
        if self._is_ours(shard):
            Path(faiss.downcast_InvertedLists(shard.invlists).filename).unlink(missing_ok=True)

    def _work_file(self) -> Path:
        """A new lists file in this instance's working folder (a temporary folder, removed
        with the instance)."""
        if self._work is None:
            parent = self.options.temp_dir or Path(tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            remove_abandoned_work(parent)
            prefix = f"{WORK_PREFIX}{this_host()}-{os.getpid()}-"
            self._work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
            weakref.finalize(self, shutil.rmtree, self._work, True)
        self._work_files += 1
        return self._work / f"lists-{self._work_files:05d}.ivfdata"

    def _require_shards(self) -> list[Any]:
        if not self._shards:
            raise RuntimeError(f"the {PLUGIN} index is empty: call build() or load() first")
        return self._shards

    def _matrix(self, array: Any, what: str = "vectors") -> np.ndarray:
        return as_matrix(array, self.dimension, what)


def remove_abandoned_work(parent: Path) -> None:
    """Remove the working folders in ``parent`` that processes of this machine left when they
    were killed (their pid no longer runs): a SIGKILL skips the cleanup at exit, and the lists
    written there can be as large as the index. Other machines' folders (a shared ``temp_dir``)
    are never touched: their pids mean nothing here."""
    if os.name != "posix":  # os.kill(pid, 0) asks only on POSIX (on Windows it terminates)
        return
    for folder in parent.glob(f"{WORK_PREFIX}{this_host()}-*"):
        parts = folder.name.removeprefix(WORK_PREFIX).split("-")
        if len(parts) == 3 and parts[1].isdigit() and not _running(int(parts[1])):
            shutil.rmtree(folder, ignore_errors=True)


def this_host() -> str:
    """This machine, as a working folder's name says it (a hash: a host name may hold '-')."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _on_disk(trained: Any, lists_file: Path, sources: list[Any]) -> Any:
    """A copy of the empty ``trained`` index whose lists are a new file ``lists_file`` holding
    the inverted lists ``sources`` merged, each list in one contiguous slot."""
    index = faiss.clone_index(trained)
    lists = faiss.OnDiskInvertedLists(index.nlist, index.code_size, str(lists_file))
    entries = sum(source.compute_ntotal() for source in sources)
    with _quiet_stdout():
        if entries:
            pointers = faiss.InvertedListsPtrVector()
            for source in sources:
                pointers.push_back(source)
            lists.merge_from_multiple(pointers.data(), pointers.size())
            # Faiss's merge lays the lists out end to end but leaves the whole file on its list
            # of free space (the file was grown after an empty start): the next list to grow or
            # shrink by half would be moved over the others. Claiming that space back makes
            # the file's books true, so a copy can be added to and removed from.
            lists.allocate_slot(lists.totsize)
        else:  # Faiss cannot map an empty file: a few bytes that no list uses
            lists.update_totsize(EMPTY_LISTS_BYTES)
    index.replace_invlists(lists, True)
    lists.this.disown()  # the index owns (and frees) its lists now
    index.ntotal = sum(lists.list_size(number) for number in range(index.nlist))
    return index


def _remove_entries(index: Any, ids: np.ndarray) -> int:
    """Remove the entries of ``ids`` (sorted) from an on-disk IVF index's lists, one list in
    memory at a time; returns how many. Not Faiss's ``remove_ids``: a list that loses more than
    half is moved, and Faiss frees its old slot as if its size in vectors were bytes, so a list
    cut to a few vectors may be given the start of its own slot, where Faiss copies nothing
    and then reads the ids from where the codes were. Here such a list is emptied first and
    its kept entries written again (the list keeps the order of its entries)."""
    lists = faiss.downcast_InvertedLists(index.invlists)
    removed = 0
    with _quiet_stdout():  # a list that moves may grow the file: Faiss prints a line
        for number in range(index.nlist):
            size = lists.list_size(number)
            if not size:
                continue
            stored = faiss.rev_swig_ptr(lists.get_ids(number), size)
            keep = ~np.isin(stored, ids, assume_unique=True)
            kept = int(keep.sum())
            if kept == size:
                continue
            # copies: moving a list may map the file anew
            kept_ids = np.ascontiguousarray(stored[keep])
            codes = faiss.rev_swig_ptr(lists.get_codes(number), size * index.code_size)
            kept_codes = np.ascontiguousarray(codes.reshape(size, -1)[keep])
            capacity = lists.lists.at(number).capacity
            if kept > capacity // 2:  # Faiss keeps the slot: overwrite the entries in place
                lists.update_entries(
                    number, 0, kept, faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes)
                )
                lists.resize(number, kept)
            else:
                lists.resize(number, 0)
                if kept:
                    lists.add_entries(
                        number, kept, faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes)
                    )
            removed += size - kept
    index.ntotal -= removed
    return removed


@contextlib.contextmanager
def _add_bar(count: int) -> Iterator[Any]:
    """The "index add" progress of ``count`` vectors; None (no bar) for fewer than a batch."""
    if count <= ADD_BATCH:
        yield None
        return
    with progress(total=count, desc="index add", unit="vector") as bar:
        yield bar


def _append(index: Any, block: Any) -> None:
    """Append every list of the in-memory IVF index ``block`` to the same list of ``index``
    (the lists file grows as Faiss allocates; a save writes it compact)."""
    lists, added = index.invlists, block.invlists
    with _quiet_stdout():
        for number in range(block.nlist):
            size = added.list_size(number)
            if size:
                lists.add_entries(number, size, added.get_ids(number), added.get_codes(number))
    index.ntotal += block.ntotal


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Faiss's OnDiskInvertedLists prints a line to stdout each time it sizes its file (no
    setting turns it off): while it does, the process's stdout goes to the null device."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _list_sizes(index: Any) -> np.ndarray:
    """The number of vectors in each list of an IVF index."""
    return np.array([index.invlists.list_size(number) for number in range(index.nlist)])


def _list_bytes(index: Any) -> np.ndarray:
    """The bytes of its file that scanning each list of an on-disk IVF index reads."""
    slots = faiss.downcast_InvertedLists(index.invlists).lists
    layout = np.array(
        [(slot.size, slot.capacity) for slot in map(slots.at, range(index.nlist))],
        dtype=np.int64,
    ).reshape(-1, 2)
    return _resident.list_bytes(layout[:, 0], layout[:, 1], index.code_size)


def _list_ids(index: Any, lists: list[int] | None = None) -> np.ndarray:
    """The ids stored in an IVF index's lists (every list, or the numbers in ``lists``)."""
    parts = []
    for number in range(index.nlist) if lists is None else lists:
        size = index.invlists.list_size(number)
        if size:
            parts.append(faiss.rev_swig_ptr(index.invlists.get_ids(number), size).copy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def shard_record(index: Any, lists: list[int] | None = None) -> dict[str, Any]:
    """What the manifest says of a shard: its vector count and the sum (modulo 2**64) of the
    ids in a few of its lists (``lists``, or up to :data:`CHECKED_LISTS` non-empty ones spread
    over it). Checking every id at load would read a page of every list, and the kernel maps
    the pages around each one: 250 MB of a 1 GB index's file before any search."""
    if lists is None:
        sizes = _list_sizes(index)
        filled = np.flatnonzero(sizes)
        picks = np.linspace(0, len(filled) - 1, min(CHECKED_LISTS, len(filled))).round()
        lists = sorted({int(filled[int(pick)]) for pick in picks})
    ids = _list_ids(index, lists)
    checksum = int(ids.view(np.uint64).sum(dtype=np.uint64))
    return {"vectors": int(index.ntotal), "checked_lists": lists, "ids_checksum": checksum}


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        shards = manifest["shards"]
        valid = manifest["format"] == FORMAT and all(
            isinstance(shard["vectors"], int)
            and isinstance(shard["ids_checksum"], int)
            and all(isinstance(number, int) for number in shard["checked_lists"])
            for shard in shards
        )
    except (ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise IndexFileError(f"{folder / MANIFEST} is not a {FORMAT} manifest")
    return manifest


def _read_index(path: Path, flags: int) -> Any:
    with _quiet_stdout():  # Faiss prints where it found the lists file
        return read_index_file(path, flags)


@hookimpl
def register_retrievers(register):
    register(PLUGIN, FaissIVFOnDiskRetriever)

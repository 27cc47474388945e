"""Keeping the mapped lists of ``faiss-ivf-ondisk`` under a bound in a searching process's RSS.

A search reads its probed lists through a memory mapping, and every page it touches stays in
the process's RSS until the kernel wants the memory back: after enough queries, the whole lists
file. Those pages are clean page cache, but RSS is what monitoring and memory limits show.
With ``resident_mib`` set, the queries go in blocks whose probed lists fit the bound, and after
each block the mapping's pages are dropped from the process (``madvise(MADV_DONTNEED)``); they
stay in the page cache, so the next block maps them back without reading the disk.

The kernel maps more than a list's bytes: whole page-cache folios around each fault, as large as
they were when the pages came into the cache (on this machine's Linux 6.18 and ext4, a query at
nprobe 32 whose lists hold 8 MiB grew RSS by 10 MiB on lists read from disk, by about 50 MiB on
an index just written). So the blocks are planned from the lists' bytes times a factor measured
as the search goes: the first block is one query, and after every block the growth of the process's
file-backed RSS is compared with what its lists hold; the largest ratio seen plans the rest.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

#: Linux's ``MADV_DONTNEED``: drop the range's pages from the process (a file mapping's pages
#: stay in the page cache and come back on the next access).
MADV_DONTNEED = 4
#: Bytes per stored id.
ID_BYTES = 8

SUPPORTED = sys.platform.startswith("linux")

_libc: Any = None
if SUPPORTED:
    _libc = ctypes.CDLL(None, use_errno=True)
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    _libc.madvise.restype = ctypes.c_int


def list_bytes(sizes: np.ndarray, capacities: np.ndarray, code_size: int) -> np.ndarray:
    """The bytes of the mapping that scanning each list reads. A list of an
    ``OnDiskInvertedLists`` file is one slot, ``capacity`` codes then the ids; a scan reads the
    ``size`` codes and ids in use: the span from the first code to the last id."""
    sizes = np.asarray(sizes, dtype=np.int64)
    spans = np.asarray(capacities, dtype=np.int64) * code_size + sizes * ID_BYTES
    return np.where(sizes > 0, spans, 0)


def block_end(
    assigned: np.ndarray, start: int, costs: np.ndarray, budget: float
) -> tuple[int, float]:
    """Where the block of queries from ``start`` ends, and what its lists cost: as many
    consecutive queries as keep their probed lists' ``costs`` (a list probed twice counts once)
    within ``budget``, at least one. ``assigned``: the lists each query probes, a row per query
    (-1: none)."""
    touched = np.zeros(len(costs), dtype=bool)
    used = 0.0
    for row in range(start, len(assigned)):
        lists = assigned[row]
        fresh = lists[(lists >= 0) & ~touched[np.maximum(lists, 0)]]
        cost = float(costs[fresh].sum())
        if row > start and used + cost > budget:
            return row, used
        touched[fresh] = True
        used += cost
    return len(assigned), used


def file_resident_bytes() -> int:
    """This process's resident file-backed (and shared) memory: ``/proc/self/statm``'s third
    field, in bytes."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[2]) * mmap.PAGESIZE


def release(address: int, length: int) -> None:
    """Drop the pages of the mapping at ``address`` (``length`` bytes) from this process's
    RSS; their contents stay in the file and the page cache."""
    if _libc is None or not address or length <= 0:
        return
    start = address - address % mmap.PAGESIZE  # madvise wants a page-aligned start
    if _libc.madvise(start, length + (address - start), MADV_DONTNEED) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"madvise(MADV_DONTNEED) failed on the mapped lists: errno {error}")


def search_in_blocks(
    assigned: np.ndarray,
    k: int,
    costs: np.ndarray,
    budget: int,
    search: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    release_all: Callable[[], None],
) -> tuple[np.ndarray, np.ndarray]:
    """``search(rows)`` (Faiss's ``k`` distances and ids for each query at ``rows``) over blocks
    of queries whose probed lists fit ``budget`` bytes of RSS, ``release_all()`` after each.

    ``assigned``: each query's probed lists; ``costs``: each list's bytes (summed over shards).
    Queries nearest the same centroid go together: they share lists, so a block holds more of
    them and each list is mapped fewer times. The answers come back in the queries' order."""
    order = np.argsort(assigned[:, 0], kind="stable")
    assigned = assigned[order]
    distances = np.empty((len(order), k), dtype=np.float32)
    ids = np.empty((len(order), k), dtype=np.int64)
    factor = 1.0  # the RSS a list brings, over its bytes: the largest seen
    release_all()
    start = 0
    while start < len(order):
        # the first block is one query (a zero budget), to measure the factor before trusting it
        stop, read = block_end(assigned, start, costs, budget / factor if start else 0.0)
        rows = order[start:stop]
        before = file_resident_bytes()
        distances[rows], ids[rows] = search(rows)
        if read > 0:
            factor = max(factor, (file_resident_bytes() - before) / read)
        release_all()
        start = stop
    return distances, ids

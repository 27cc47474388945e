"""``faiss-ivf-ondisk`` with ``resident_mib``: searches that keep the mapped lists' pages in the
process's RSS under a bound answer exactly as unbounded ones, and the bound holds (measured in a
fresh process, from its peak RSS)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retro_platform.default_plugins.retrievers._resident import block_end, search_in_blocks
from retro_platform.errors import ConfigError
from retro_platform.plugins import build_plugin
from retro_platform.testing.retriever import clustered_vectors, far_ids

DIMENSION = 32


def ondisk(dimension: int = DIMENSION, **options):
    return build_plugin("retrievers", {"name": "faiss-ivf-ondisk", **options}, dimension)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("codec", ["flat", "sq8"])
@pytest.mark.parametrize("shards", [1, 3])
def test_bounded_searches_answer_as_unbounded_ones(tmp_path: Path, metric, codec, shards) -> None:
    vectors, ids = clustered_vectors(6000, DIMENSION, seed=0), far_ids(6000)
    queries = clustered_vectors(300, DIMENSION, seed=1)
    options = {"metric": metric, "codec": codec, "nlist": 32, "nprobe": 5, "shards": shards}
    built = ondisk(**options)
    built.build(vectors, ids)
    built.save(tmp_path / "index.ivfdisk")
    plain = ondisk(**options)
    plain.load(tmp_path / "index.ivfdisk")
    expected = plain.search(queries, 10)

    bounded = ondisk(**options, resident_mib=1)
    bounded.load(tmp_path / "index.ivfdisk")
    for found in (bounded.search(queries, 10), bounded.search(queries[:1], 10)):
        rows = len(found[0])
        np.testing.assert_array_equal(found[1], expected[1][:rows])
        np.testing.assert_array_equal(found[0], expected[0][:rows])
    assert [part.shape for part in bounded.search(queries[:0], 10)] == [(0, 10), (0, 10)]

    # after add and remove (the lists then live in writable working copies)
    for index in (plain, bounded):
        index.remove(ids[:500])
        index.add(vectors[:200], ids[:200])
    expected = plain.search(queries, 10)
    found = bounded.search(queries, 10)
    np.testing.assert_array_equal(found[1], expected[1])
    np.testing.assert_array_equal(found[0], expected[0])


def test_blocks_keep_their_lists_within_the_budget() -> None:
    costs = np.array([10, 20, 30, 40, 0], dtype=np.int64)
    assigned = np.array([[0, 1], [1, 0], [2, 3], [3, -1], [4, 0], [2, 3]])
    # queries 0 and 1 probe the same lists: counted once (30), query 2 would add 70
    assert block_end(assigned, 0, costs, budget=50) == (2, 30)
    assert block_end(assigned, 2, costs, budget=70) == (4, 70)  # query 3's list: counted
    assert block_end(assigned, 2, costs, budget=69) == (3, 70)  # one query even over budget
    assert block_end(assigned, 0, costs, budget=1000) == (6, 100)
    assert block_end(assigned, 5, costs, budget=1) == (6, 70)


def test_answers_come_back_in_the_order_of_the_queries() -> None:
    """Queries are searched grouped by their nearest centroid; each answer lands on its row."""
    assigned = np.array([[3, 1], [0, 2], [3, 0], [1, 2], [0, 3]])
    seen: list[list[int]] = []

    def search(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(rows.tolist())
        return rows[:, None].astype(np.float32) * 2, rows[:, None] * 10

    costs = np.ones(4, dtype=np.int64)
    distances, ids = search_in_blocks(assigned, 1, costs, 2, search, lambda: None)
    assert ids[:, 0].tolist() == [0, 10, 20, 30, 40]
    assert distances[:, 0].tolist() == [0, 2, 4, 6, 8]
    assert sorted(row for block in seen for row in block) == [0, 1, 2, 3, 4]
    assert seen[0] == [1]  # the first block is one query, to measure the kernel's mapping


def test_the_bound_must_be_a_positive_size() -> None:
    with pytest.raises(ConfigError, match="resident_mib"):
        ondisk(resident_mib=0)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from retro_platform.plugins import build_plugin

    folder, queries, resident = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
    options = {"name": "faiss-ivf-ondisk", "nlist": 256, "nprobe": 16, "resident_mib": resident}
    index = build_plugin("retrievers", options, queries.shape[1])
    index.load(Path(folder))

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field))

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from the current RSS
    start = status("VmRSS")
    for first in range(0, len(queries), 500):
        index.search(queries[first : first + 500], 10)
    print(json.dumps({"grown": status("VmHWM") - start}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident_mib is Linux only")
def test_the_peak_rss_of_a_bounded_search_stays_within_the_bound(tmp_path: Path) -> None:
    """A fresh process searches a 52 MB lists file with and without ``resident_mib = 8``: the
    unbounded search's peak RSS grows by most of the file, the bounded one's by at most the
    bound plus 8 MiB (the first, measuring query, and the search's own allocations)."""
    dimension = 64
    vectors = clustered_vectors(200_000, dimension, seed=0)
    index = ondisk(dimension, nlist=256)
    index.build(vectors, np.arange(len(vectors)))
    index.save(tmp_path / "index.ivfdisk")
    np.save(tmp_path / "queries.npy", vectors[::200])  # 1,000 queries near every list
    lists_bytes = (tmp_path / "index.ivfdisk" / "shard-000.ivfdata").stat().st_size

    def grown(resident: int | None) -> int:
        command = [sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "index.ivfdisk"),
                   str(tmp_path / "queries.npy"), json.dumps(resident)]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return json.loads(out.splitlines()[-1])["grown"]

    assert grown(None) > lists_bytes / 2
    assert grown(8) <= (8 + 8) * 2**20

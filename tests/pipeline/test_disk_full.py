"""``retro-platform index`` on a disk that fills up, or under a file size limit: each stage
stops with one ``Error:`` line (exit 2) naming its file, and the rerun with room resumes to the
same files an uninterrupted run writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from tests.disk import SmallDisk, one_line_error, pages, partials, run_cli, small_disk
from tests.pipeline.helpers import write_experiment

__all__ = ["small_disk"]  # the fixture


def experiment(folder: Path, corpus: Path, store: Path, **tables) -> Path:
    """An experiment whose store folder is ``store`` and whose database is in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'store.db'}"
    return write_experiment(folder, corpus, store={"path": str(store), "url": url}, **tables)


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [*map(str, args)])
    return result.exit_code, result.stderr


def files(store: Path) -> dict[str, Path]:
    """The embedding, chunk-id, index and neighbour files of a store with one of each."""
    found = {
        "embeddings": [
            p for p in store.glob("embeddings/*.npy") if not p.name.endswith(".ids.npy")
        ],
        "ids": list(store.glob("embeddings/*.ids.npy")),
        "index": list(store.glob("indexes/*.index")),
        "neighbours": list(store.glob("neighbours/*.npy")),
    }
    return {what: paths[0] for what, paths in found.items() if paths}


def indexed_whole(folder: Path, corpus: Path, **tables) -> dict[str, Path]:
    """The files an uninterrupted ``index`` writes."""
    path = experiment(folder, corpus, folder / "store", **tables)
    assert invoke("ingest", path)[0] == 0
    assert invoke("index", path, "--no-progress")[0] == 0
    return files(folder / "store")


def same_arrays(got: dict[str, Path], expected: dict[str, Path]) -> None:
    for what in ("embeddings", "ids", "neighbours"):
        assert np.array_equal(np.load(got[what]), np.load(expected[what])), what


@pytest.mark.slow
def test_a_full_disk_stops_each_stage_with_one_line_and_the_rerun_resumes(
    tmp_path: Path, corpus_dir: Path, small_disk: SmallDisk
) -> None:
    expected = indexed_whole(tmp_path / "whole", corpus_dir)
    size = {what: pages(path.stat().st_size) for what, path in expected.items()}
    store = small_disk.path
    path = experiment(tmp_path / "full", corpus_dir, store)
    assert invoke("ingest", path)[0] == 0

    # embeddings: the file's blocks are claimed when it is made, so no SIGBUS mid-write
    small_disk.resize(size["embeddings"] // 2)
    failed = run_cli("index", path, "--no-progress")
    line = one_line_error(failed.returncode, failed.stderr)
    assert line.startswith(f"Error: no space left on {store / 'embeddings'}/"), line
    assert "MB needed, " in line and line.endswith("free space and rerun: it resumes")
    assert not list(store.glob("embeddings/*"))  # nothing done, nothing left taking space

    # the index (written atomically): no temporary file left, the embeddings kept
    small_disk.resize(small_disk.used + size["embeddings"] + size["ids"] + 16 * 1024)
    code, stderr = invoke("index", path, "--no-progress")
    line = one_line_error(code, stderr)
    assert line.startswith(f"Error: no space left on {store / 'indexes'}/"), line
    assert line.endswith(
        "free space and rerun: it resumes: the embeddings are kept, the index is built again"
    )
    assert not list(store.glob("indexes/*")) and not partials(store)
    embedded = files(store)["embeddings"].stat().st_mtime_ns

    # neighbours: memory-mapped like the embeddings
    small_disk.resize(small_disk.used + size["index"] + size["neighbours"] // 2)
    failed = run_cli("index", path, "--no-progress")
    line = one_line_error(failed.returncode, failed.stderr)
    assert line.startswith(f"Error: no space left on {store / 'neighbours'}/"), line
    indexed = files(store)["index"].stat().st_mtime_ns

    small_disk.resize(small_disk.used + 2 * size["neighbours"])
    code, stderr = invoke("index", path, "--no-progress")
    assert code == 0, stderr
    got = files(store)
    same_arrays(got, expected)
    assert got["embeddings"].stat().st_mtime_ns == embedded  # finished work is not redone
    assert got["index"].stat().st_mtime_ns == indexed


@pytest.mark.slow
def test_a_file_size_limit_while_embedding_is_one_line_and_the_rerun_resumes(
    tmp_path: Path, corpus_dir: Path
) -> None:
    tables = {"embedder": {"name": "hashing", "dimension": 256}}  # 1.2 MB of embeddings
    expected = indexed_whole(tmp_path / "whole", corpus_dir, **tables)
    store = tmp_path / "limited" / "store"
    path = experiment(tmp_path / "limited", corpus_dir, store, **tables)
    assert invoke("ingest", path)[0] == 0

    failed = run_cli("index", path, "--no-progress", file_size_limit=700_000)
    line = one_line_error(failed.returncode, failed.stderr)
    assert line.startswith(f"Error: file too large: {store / 'embeddings'}/"), line
    assert "passes the file size limit (0.7 MB); raise it (ulimit -f)" in line
    assert line.endswith("and rerun: it resumes")

    code, stderr = invoke("index", path, "--no-progress")
    assert code == 0, stderr
    same_arrays(files(store), expected)

"""Atomic file writes: the target holds its old content or all of the new, never a mix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retro_platform.atomic import atomic_destination, stale_partials, write_text_atomic


def test_text_is_written_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "folder" / "run.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert list(path.parent.iterdir()) == [path]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.faiss"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_destination(path) as temporary:
        assert temporary.parent == tmp_path and temporary.suffix == ".faiss"
        assert temporary.exists() and temporary.name.startswith(".index.faiss.")
        temporary.write_bytes(b"half of the ne")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_a_killed_writer_leaves_the_old_file_and_a_partial_to_clean(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"old")
    script = (
        "import os, sys\n"
        "from retro_platform.atomic import atomic_destination\n"
        "with atomic_destination(sys.argv[1]) as temporary:\n"
        "    temporary.write_bytes(b'half')\n"
        "    os._exit(9)  # no cleanup runs, as after SIGKILL\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=root, env={"PYTHONPATH": str(root)}
    )
    assert done.returncode == 9
    assert path.read_bytes() == b"old"
    (partial,) = stale_partials(path)
    assert partial.read_bytes() == b"half"
    assert stale_partials(tmp_path / "other.pt") == []

"""Atomic file writes: the target holds its old content or all of the new, never a mix."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from retro_platform.atomic import atomic_destination, stale_partials, write_text_atomic
from retro_platform.disk import disk_errors, reserve
from retro_platform.errors import DiskError


def test_text_is_written_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "folder" / "run.json"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second ✓")
    assert path.read_text(encoding="utf-8") == "second ✓"
    assert list(path.parent.iterdir()) == [path]


def test_a_file_written_atomically_has_the_mode_of_any_new_file(tmp_path: Path) -> None:
    # mkstemp makes its file the owner's alone: checkpoints, chunk-id files and tokenizers were
    # 0600 beside the store's 0644 files, unreadable by another user reading a shared store
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert (written.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


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


def write_folder(temporary: Path, content: bytes) -> None:
    """What an index of several files does with the temporary path: makes it a folder."""
    temporary.unlink()
    temporary.mkdir()
    (temporary / "lists.ivfdata").write_bytes(content)
    (temporary / "header.index").write_bytes(b"header")


def test_a_folder_written_in_place_of_the_file_replaces_an_old_folder(tmp_path: Path) -> None:
    path = tmp_path / "index.ivfdisk"
    for content in (b"first", b"second"):
        with atomic_destination(path) as temporary:
            write_folder(temporary, content)
        assert (path / "lists.ivfdata").read_bytes() == content
        assert sorted(p.name for p in path.iterdir()) == ["header.index", "lists.ivfdata"]
        assert list(tmp_path.iterdir()) == [path]  # the old folder went, nothing else is left


def test_a_failed_folder_write_keeps_the_old_folder_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.ivfdisk"
    with atomic_destination(path) as temporary:
        write_folder(temporary, b"old")
    with pytest.raises(RuntimeError), atomic_destination(path) as temporary:
        write_folder(temporary, b"half")
        raise RuntimeError("the writer failed")
    assert (path / "lists.ivfdata").read_bytes() == b"old"
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


# ---- a disk that fills up: one DiskError naming the file, the old content kept


def test_a_full_disk_in_an_atomic_write_is_a_disk_error_and_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index.bin"
    path.write_bytes(b"old")
    with pytest.raises(DiskError) as raised, atomic_destination(path, "it resumes") as partial:
        partial.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(raised.value)
    assert message.startswith(f"no space left on {path}: ") and " MB free; " in message
    assert message.endswith("free space and rerun: it resumes")
    assert path.read_bytes() == b"old" and stale_partials(path) == []


@pytest.mark.parametrize(
    ("error", "start"),
    [
        # torch.save to a Python file: its RuntimeError is raised while handling the OSError
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
         "file too large: "),
        # Faiss: the system's reason at the end of its message
        (RuntimeError("Error in write_index: 'ret == (n)' failed: write error in f: 1 != 2 "
                      "(Read-only file system)"), "read-only file system: "),
    ],
)  # fmt: skip
def test_a_librarys_runtime_error_over_a_disk_error_is_a_disk_error(
    tmp_path: Path, error: RuntimeError, start: str
) -> None:
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(DiskError, match=f"^{start}"), disk_errors(path):
        try:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        except OSError:
            if "inline_container" in str(error):
                raise error from None  # the OSError stays its __context__
        raise error


def test_other_errors_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), disk_errors(tmp_path / "x"):
        raise FileNotFoundError(errno.ENOENT, "gone")
    with pytest.raises(RuntimeError, match="unexpected pos"), disk_errors(tmp_path / "x"):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1 vs 2")


def test_reserve_falls_back_to_the_free_space_where_blocks_cannot_be_reserved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "vectors.npy"
    with path.open("wb") as handle:
        handle.truncate(10_000_000)  # a sparse file: its blocks not yet claimed

    def unsupported(descriptor: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported, raising=False)
    reserve(path)  # this disk has room
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, 1000))
    with pytest.raises(DiskError, match=r"vectors.npy: 10.0 MB needed, 0.0 MB free; free space"):
        reserve(path, "it resumes")

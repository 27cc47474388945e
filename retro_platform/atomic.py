"""Writing a file so that a reader never sees half of it, even after a kill.

Every file a long job leaves behind (a trained tokenizer, a vector index, a checkpoint, a run's
id and summary) is written to a temporary file in the target's folder, fsynced, and renamed
over the target; the folder is then fsynced so that the rename survives a power loss. The
target holds either its old content or all of the new one, never a mix. A disk that is full
(or over a size limit, a quota, or read-only) is a one-line
:class:`~retro_platform.errors.DiskError` naming the target; the target keeps its old content and
the temporary file is removed.

A writer may turn the temporary path into a folder (an index of several files): the folder's
files and the folder are fsynced and it is renamed into place the same way. A folder cannot be
renamed over an existing one, so an old one is first renamed aside and then removed: a kill
between those two renames leaves no target at all (which reads as "not built"), never a mix.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retro_platform.disk import KEPT, disk_errors

#: The process's umask, read once (reading it means setting it): the mode a new file gets.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_destination(path: str | Path, then: str = KEPT) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; moved over ``path`` on success.

    The temporary file exists (empty) in ``path``'s folder and keeps its suffix (writers that
    add a missing extension find it there); a writer may replace it by a folder. If the block raises, it is removed and ``path`` is
    untouched. A process killed inside the block leaves a hidden
    ``.<name>.<random>.partial<suffix>`` file and never a half-written ``path``. A disk's error
    (:func:`~retro_platform.disk.disk_errors`) is raised as a ``DiskError`` about ``path`` that
    says a rerun ``then`` (e.g. "it resumes").
    """
    target = Path(path)
    with disk_errors(target, then):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".partial{target.suffix}"
        )
        os.close(handle)
        temporary = Path(name)
        # mkstemp's file is the owner's alone: give it the mode open() would, so that the
        # target reads like every other file of the store (another user may read a store)
        temporary.chmod(0o666 & ~_UMASK)
        try:
            yield temporary
            if temporary.is_dir():
                _replace_folder(temporary, target)
            else:
                _fsync(temporary)
                os.replace(temporary, target)
        except BaseException:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)
            raise
        _fsync(target.parent)


def _replace_folder(folder: Path, target: Path) -> None:
    """Move the written ``folder`` to ``target`` (see the module docstring)."""
    for file in folder.iterdir():
        _fsync(file)
    _fsync(folder)
    old = None
    if target.is_dir():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        os.replace(target, old / target.name)
    elif target.exists():
        target.unlink()
    os.replace(folder, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def stale_partials(path: str | Path) -> list[Path]:
    """Temporary files that :func:`atomic_destination` left for ``path`` in a killed process."""
    target = Path(path)
    return sorted(target.parent.glob(f".{target.name}.*.partial{target.suffix}"))


def write_text_atomic(path: str | Path, text: str, then: str = KEPT) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_destination`."""
    with atomic_destination(path, then) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def _fsync(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk. Windows cannot open a folder and
    needs no folder fsync; that and any other refusal of a folder is ignored."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not path.is_dir():
            raise
    finally:
        os.close(descriptor)

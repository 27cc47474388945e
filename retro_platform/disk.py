"""When the disk fills up: one line that names the file and the fix, never a traceback or a
crash.

A write fails when the disk is full (``ENOSPC``), a file size limit is reached (``EFBIG``,
``ulimit -f``), a quota is used up (``EDQUOT``) or the file system is read-only (``EROFS``).
:func:`disk_errors` turns each into a :class:`~retro_platform.errors.DiskError`, however the
library that wrote reports it: an ``OSError``; torch's ``RuntimeError`` raised while writing to
a Python file (the ``OSError`` is its context); Faiss's ``RuntimeError`` whose message ends with
the system's reason.

A memory-mapped file (embeddings, neighbours) claims its disk blocks only when a page is first
written; on a full disk that write kills the process with ``SIGBUS`` and no message.
:func:`reserve` claims them when the file is made (``posix_fallocate``), so the same full disk
is an error before the first row.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retro_platform.errors import DiskError

#: What a rerun does, when the caller does not say.
KEPT = "what was finished is kept"

_EDQUOT = getattr(errno, "EDQUOT", None)  # not on Windows
#: The errors of a disk (not of the program): full, over a size limit or quota, read-only.
DISK_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, errno.EFBIG, _EDQUOT, errno.EROFS) if code is not None
)
#: What ``posix_fallocate`` answers on a file system that cannot reserve blocks.
_NO_FALLOCATE = frozenset(
    code
    for code in (errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", None), errno.ENOSYS, errno.EINVAL)
    if code is not None
)


def disk_errno(error: BaseException) -> int | None:
    """The disk error number (:data:`DISK_ERRNOS`) behind ``error`` or an exception it was
    raised from or while handling; None when it is not a disk's error."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_ERRNOS:
            return current.errno
        if isinstance(current, RuntimeError):  # Faiss: "... write error in f: 1 != 2 (reason)"
            text = str(current).lower()
            for code in DISK_ERRNOS:
                if os.strerror(code).lower() in text:
                    return code
        current = current.__cause__ or current.__context__
    return None


def disk_message(code: int, path: str | Path, then: str = KEPT, needed: int | None = None) -> str:
    """One line: which disk error writing ``path`` met, what frees it, and that a rerun
    ``then`` (e.g. "it resumes"); ``needed`` bytes, where known, and the bytes free."""
    path = Path(path)
    if code == errno.ENOSPC:
        wanted = f"{_mb(needed)} needed, " if needed is not None else ""
        return (
            f"no space left on {path}: {wanted}{_mb(_free(path))} free; "
            f"free space and rerun: {then}"
        )
    if code == errno.EFBIG:
        return (
            f"file too large: {path} passes the file size limit{_size_limit()}; "
            f"raise it (ulimit -f) and rerun: {then}"
        )
    if code == _EDQUOT:
        return (
            f"disk quota exceeded writing {path}; free space or raise the quota and rerun: {then}"
        )
    return f"read-only file system: cannot write {path}; make it writable and rerun: {then}"


@contextmanager
def disk_errors(path: str | Path, then: str = KEPT) -> Iterator[None]:
    """Turn a disk's error in the block (see the module docstring) into a one-line
    :class:`DiskError` about ``path``; any other error passes unchanged."""
    try:
        yield
    except DiskError:
        raise
    except (OSError, RuntimeError) as error:
        code = disk_errno(error)
        if code is None:
            raise
        raise DiskError(disk_message(code, path, then)) from error


def reserve(path: str | Path, then: str = KEPT) -> None:
    """Claim the disk blocks of the whole file ``path`` now, so that no write into its memory
    map can find the disk full (its content is unchanged; blocks already held stay).

    Where the file system cannot reserve blocks (or Python cannot ask: not POSIX), the free
    space is compared with what the file lacks instead.

    Raises:
        DiskError: the disk cannot hold the file.
    """
    path = Path(path)
    status = path.stat()
    held = getattr(status, "st_blocks", None)
    needed = max(status.st_size - held * 512, 0) if held is not None else None
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        try:
            with open(path, "r+b") as handle:
                allocate(handle.fileno(), 0, status.st_size)
            return
        except OSError as error:
            if error.errno in DISK_ERRNOS:
                raise DiskError(disk_message(error.errno, path, then, needed)) from error
            if error.errno not in _NO_FALLOCATE:
                raise
    if needed is not None and needed > _free(path):  # held is None: no sparse files (Windows)
        raise DiskError(disk_message(errno.ENOSPC, path, then, needed))


def _free(path: Path) -> int:
    """Bytes free on the file system of ``path`` (or of its nearest folder that exists)."""
    for folder in (path, *path.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free
    return 0


def _size_limit() -> str:
    """`` (N MB)``: this process's file size limit, or nothing where there is none to tell."""
    try:
        import resource  # not on Windows
    except ImportError:
        return ""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "" if soft == resource.RLIM_INFINITY else f" ({_mb(soft)})"


def _mb(size: int | None) -> str:
    return f"{(size or 0) / 1e6:.1f} MB"

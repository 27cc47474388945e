"""The store's array files (embeddings, neighbours): ``.npy`` files opened memory-mapped.

A file a stage writes has its disk blocks reserved when it is opened for writing
(:func:`~retro_platform.disk.reserve`): a full disk is a one-line error then, not a ``SIGBUS``
at the first row the memory map cannot place.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from retro_platform.disk import disk_errors, reserve
from retro_platform.errors import DiskError, StoreError

#: What a rerun after a disk's error does.
RESUMES = "it resumes"


def open_array(
    path: Path, shape: tuple[int, ...], dtype: type, what: str, fix: str, mode: str = "r"
) -> np.ndarray:
    """Memory-map ``path``, checking it holds ``shape`` of ``dtype``; else a one-line
    ``StoreError`` that names ``what`` the file is and the command that ``fix``-es it."""
    try:
        array = np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as error:
        raise StoreError(f"{what} file {path} is unreadable ({error}); run: {fix}") from None
    if array.shape != shape or array.dtype != dtype:
        raise StoreError(
            f"{what} file {path} holds {array.dtype} {array.shape}, expected "
            f"{np.dtype(dtype)} {shape}; run: {fix}"
        )
    return array


def resume_array(
    path: Path, shape: tuple[int, ...], dtype: type, done: int, what: str, fix: str
) -> tuple[np.ndarray, int]:
    """The file a resumable stage writes, memory-mapped for writing, and the row to go on from:
    ``done`` when the file is there (checked like :func:`open_array`), else a new file and 0.

    Raises:
        DiskError: the disk cannot hold the whole file (a new one is removed again; the rows
            ``done`` of one that is there are kept).
    """
    if done == 0 or not path.exists():
        try:
            with disk_errors(path, RESUMES):
                path.parent.mkdir(parents=True, exist_ok=True)
                array = np.lib.format.open_memmap(path, "w+", dtype, shape)
                reserve(path, RESUMES)
        except DiskError:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)  # nothing in it yet: give its blocks back
            raise
        return array, 0
    array = open_array(path, shape, dtype, what, fix, "r+")
    reserve(path, RESUMES)  # a file made before reservations may have holes
    return array, done

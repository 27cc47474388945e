"""The store's array files (embeddings, neighbours): ``.npy`` files opened memory-mapped."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retro_platform.errors import StoreError


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
    ``done`` when the file is there (checked like :func:`open_array`), else a new file and 0."""
    if done == 0 or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, "w+", dtype, shape), 0
    return open_array(path, shape, dtype, what, fix, "r+"), done

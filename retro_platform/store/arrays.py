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

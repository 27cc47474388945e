"""retro-platform: an experiment platform for retrieval-enhanced transformers (RETRO).

``from retro_platform import RETRO`` gives the model; ``hookimpl`` marks plugin hooks.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

from retro_platform.hookspecs import hookimpl

try:
    __version__ = metadata.version("retro-platform")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

if TYPE_CHECKING:
    from retro_platform.model import RETRO


def __getattr__(name: str) -> Any:
    # torch is imported only when the model is asked for, so the CLI starts fast
    if name == "RETRO":
        from retro_platform.model import RETRO

        return RETRO
    raise AttributeError(f"module 'retro_platform' has no attribute {name!r}")


__all__ = ["RETRO", "hookimpl", "__version__"]

"""The RETRO model: its checked arguments (``config.py``), the architecture (``retro.py``) and
its fused loss (``loss.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retro_platform.model.config import RetroConfig

if TYPE_CHECKING:
    from retro_platform.model.retro import RETRO


def __getattr__(name: str) -> Any:
    # torch is imported only when the model is asked for: its config needs none
    if name == "RETRO":
        from retro_platform.model.retro import RETRO

        return RETRO
    raise AttributeError(f"module 'retro_platform.model' has no attribute {name!r}")


__all__ = ["RETRO", "RetroConfig"]

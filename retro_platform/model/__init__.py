"""The RETRO model: architecture (``retro.py``) and its fused loss (``loss.py``)."""

from retro_platform.model.retro import RETRO

__all__ = ["RETRO"]

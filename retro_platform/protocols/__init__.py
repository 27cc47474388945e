"""What each swappable component must offer. The core is written against these alone."""

from retro_platform.protocols.positional_encoding import AttentionRole, PositionalEncoding

__all__ = ["AttentionRole", "PositionalEncoding"]

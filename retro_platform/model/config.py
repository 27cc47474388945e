"""What a RETRO is built from: :class:`RetroConfig`, every argument of ``RETRO(...)`` checked.

Plain Python, no torch, so it is cheap to import. The config layer words the same layer-range
rule (:func:`layers_outside`) for an experiment file's reader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: Settings that must be positive integers.
_POSITIVE = ("num_tokens", "max_seq_len", "enc_dim", "dec_dim", "heads", "dim_head",
             "chunk_size", "neighbour_len", "ff_mult", "loss_chunk_tokens")  # fmt: skip
_DEPTHS = ("enc_depth", "dec_depth")
_DROPOUTS = ("enc_attn_dropout", "enc_ff_dropout", "dec_attn_dropout", "dec_ff_dropout")
#: Each list of cross-attention layers and the depth of its stack.
CROSS_ATTN_LAYERS = (("dec_cross_attn_layers", "dec_depth"), ("enc_cross_attn_layers", "enc_depth"))


def layers_outside(layers: Iterable[int] | None, depth: int) -> list[int]:
    """The layers of ``layers`` outside ``1..depth`` (layers count from 1), in order; none for
    ``None`` (the stack's default)."""
    return [layer for layer in layers or () if not 1 <= layer <= depth]


@dataclass(frozen=True)
class RetroConfig:
    """The arguments of :class:`~retro_platform.model.retro.RETRO`, with its defaults.

    Built normalised (layer lists as tuples, ``neighbour_len`` twice ``chunk_size`` when not
    given, the encoding's options a dict of their own) and checked: a bad value raises
    ``ValueError``. :meth:`as_dict` is what a checkpoint stores.
    """

    num_tokens: int = 28996
    max_seq_len: int = 2048
    enc_dim: int = 896
    enc_depth: int = 2
    #: 1-based encoder layers that cross-attend to the retrieving chunk; None: every layer
    enc_cross_attn_layers: tuple[int, ...] | None = None
    dec_depth: int = 12
    #: 1-based decoder layers with chunked cross-attention
    dec_cross_attn_layers: tuple[int, ...] = (1, 3, 6, 9)
    heads: int = 8
    dec_dim: int = 768
    dim_head: int = 64
    enc_attn_dropout: float = 0.0
    enc_ff_dropout: float = 0.0
    dec_attn_dropout: float = 0.0
    dec_ff_dropout: float = 0.0
    ff_mult: int = 4
    chunk_size: int = 64
    #: tokens per neighbour; None: ``2 * chunk_size``, a chunk plus its continuation
    neighbour_len: int | None = None
    pad_id: int = 0
    positional_encoding: str = "rotary"
    #: the plugin's keyword options; None: none
    positional_encoding_options: dict[str, Any] | None = None
    checkpoint_activations: bool = False
    loss_chunk_tokens: int = 2048

    def __post_init__(self) -> None:
        normalised = {
            "enc_cross_attn_layers": None
            if self.enc_cross_attn_layers is None
            else tuple(self.enc_cross_attn_layers),
            "dec_cross_attn_layers": tuple(self.dec_cross_attn_layers),
            "neighbour_len": 2 * self.chunk_size
            if self.neighbour_len is None
            else self.neighbour_len,
            "positional_encoding_options": dict(self.positional_encoding_options or {}),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: set once, here
        self._check()

    @property
    def encoder_cross_layers(self) -> tuple[int, ...]:
        """The encoder layers that cross-attend, the default (every one) spelt out."""
        if self.enc_cross_attn_layers is None:
            return tuple(range(1, self.enc_depth + 1))
        return self.enc_cross_attn_layers

    def as_dict(self) -> dict[str, Any]:
        """Plain values, one per argument: what a checkpoint stores and compares on resume."""
        return dataclasses.asdict(self)

    def _check(self) -> None:
        for key in _POSITIVE:
            value = getattr(self, key)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        for key in _DEPTHS:
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        for key in _DROPOUTS:
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {value!r}")
        for key, depth in CROSS_ATTN_LAYERS:
            bad = layers_outside(getattr(self, key), getattr(self, depth))
            if bad:
                raise ValueError(
                    f"{key} {bad} outside 1..{depth}={getattr(self, depth)} (layers count from 1)"
                )
        if self.neighbour_len < self.chunk_size:
            raise ValueError(
                f"neighbour_len ({self.neighbour_len}) must be at least chunk_size "
                f"({self.chunk_size}): a neighbour is its chunk plus the continuation"
            )

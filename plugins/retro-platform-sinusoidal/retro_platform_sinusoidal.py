"""The fixed sin/cos absolute positional encoding of Vaswani et al. (2017), as a plugin.

A worked example of a third-party retro-platform plugin: one module, one hook, one class. Its
pyproject.toml names this module under the ``retro_platform`` entry-point group, and
retro-platform calls :func:`register_positional_encodings` when it loads plugins.

Select it with ``[model] positional_encoding = "sinusoidal"`` in an experiment file.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from retro_platform.hookspecs import Register, hookimpl
from retro_platform.protocols import PositionalEncoding

__version__ = "0.1.0"


class SinusoidalEncoding(PositionalEncoding):
    """Adds ``PE(pos, 2i) = sin(pos / base^(2i/dim))``, ``PE(pos, 2i+1) = cos(...)`` to tokens.

    Only :meth:`embed` is overridden: the encoding is absolute, so attention itself (``rotate``,
    ``bias``) stays the identity. Nothing is learned and nothing is stored in checkpoints; the
    table is computed from the positions, so any position works, beyond ``max_positions`` too.

    Args:
        base: the wavelength scale (10000 in the paper).
        **kwargs: the protocol's arguments (``role``, ``dim``, ...), see
            :class:`~retro_platform.protocols.PositionalEncoding`.
    """

    def __init__(self, *, base: float = 10000.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if base <= 1:
            raise ValueError(f"sinusoidal base must be greater than 1, got {base}")
        self.base = base
        # One frequency per (sin, cos) pair; an odd dim drops the last cosine.
        exponents = torch.arange(0, self.dim, 2, dtype=torch.float32) / self.dim
        self.register_buffer("inv_freq", torch.exp(-math.log(base) * exponents), persistent=False)

    def table(self, positions: Tensor) -> Tensor:
        """The encoding ``(n, dim)`` of integer ``positions`` ``(n,)``, interleaved sin/cos."""
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)[:, : self.dim]

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        """``x + PE(positions)``: token embeddings ``(..., n, dim)`` with ``positions`` ``(n,)``."""
        return x + self.table(positions).to(x.dtype)

    def extra_repr(self) -> str:
        return f"role={self.role!r}, dim={self.dim}, base={self.base}"


@hookimpl
def register_positional_encodings(register: Register) -> None:
    """Give retro-platform the ``sinusoidal`` encoding."""
    register("sinusoidal", SinusoidalEncoding)

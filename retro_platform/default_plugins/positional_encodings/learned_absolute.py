"""Learned absolute position embeddings (as in GPT-2), added to the token embeddings.

Only the two streams that have embeddings use it: the decoder's sequence and each neighbour in
the encoder. Attention itself sees no positions.
"""

from __future__ import annotations

from torch import Tensor, nn

from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PositionalEncoding


class LearnedAbsoluteEncoding(PositionalEncoding):
    """A trainable vector per position, up to ``max_positions``.

    Args:
        init_std: standard deviation of the normal initialisation.
    """

    def __init__(self, *, init_std: float = 0.02, **kwargs) -> None:
        super().__init__(**kwargs)
        self.embedding: nn.Embedding | None = None
        if self.role in ("decoder", "encoder"):
            self.embedding = nn.Embedding(self.max_positions, self.dim)
            nn.init.normal_(self.embedding.weight, std=init_std)

    def embed(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.embedding is None:
            return x
        if positions.numel() and int(positions.max()) >= self.max_positions:
            raise ValueError(
                f"position {int(positions.max())} is beyond the {self.max_positions} positions "
                "that learned-absolute was built for; raise max_seq_len"
            )
        return x + self.embedding(positions)


@hookimpl
def register_positional_encodings(register):
    register("learned-absolute", LearnedAbsoluteEncoding)

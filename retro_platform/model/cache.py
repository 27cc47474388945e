"""What a RETRO keeps between the steps of incremental decoding, so that a new token costs one
token's work instead of a pass over the whole prefix (:meth:`RETRO.decode`).

Three things are kept:

* per decoder layer, the keys (already rotated) and values of every token so far;
* the states at the first chunked cross-attention layer of the tokens so far: when a chunk
  completes, the encoder reads its states to encode the chunk's neighbours;
* per chunked cross-attention layer, the keys and values of the neighbours of the latest
  completed chunk: the only ones any later token attends to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class SelfAttentionCache:
    """One layer's keys and values, ``(batch, heads, tokens, dim_head)``, in buffers of
    ``capacity`` tokens allocated at the first append."""

    capacity: int
    length: int = 0
    keys: Tensor | None = None
    values: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add the keys and values of new tokens; return those of every token so far."""
        end = self.length + k.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} tokens; {end} were given")
        if self.keys is None:
            shape = (*k.shape[:-2], self.capacity, k.shape[-1])
            self.keys = k.new_empty(shape)
            self.values = v.new_empty(shape)
        self.keys[..., self.length : end, :] = k
        self.values[..., self.length : end, :] = v
        self.length = end
        return self.keys[..., :end, :], self.values[..., :end, :]


@dataclass
class NeighbourKeys:
    """One chunked cross-attention layer's view of a chunk's encoded neighbours: keys (rotated
    to their ``positions``) and values ``(batch, heads, k * r, dim_head)``, and which keys are
    real tokens ``(batch, k * r)`` (None: all of them)."""

    chunk: int
    keys: Tensor
    values: Tensor
    mask: Tensor | None
    positions: Tensor


@dataclass
class DecodingCache:
    """The state of a batch being decoded: ``length`` tokens per row so far, the same number
    in every row. Made by :meth:`RETRO.new_cache`; ``retrieval`` says whether completed chunks
    come with neighbours (a model used with retrieval off gets none)."""

    batch: int
    capacity: int
    retrieval: bool
    self_attention: list[SelfAttentionCache]
    #: (batch, capacity, dec_dim) normalised states at the first CCA layer, allocated on use
    chunk_states: Tensor | None = None
    #: by decoder layer index: the neighbours of the latest completed chunk
    neighbours: dict[int, NeighbourKeys] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Tokens per row so far: what every layer's keys hold."""
        return self.self_attention[0].length

    def keep_states(self, h: Tensor, start: int) -> None:
        if self.chunk_states is None:
            self.chunk_states = h.new_empty(self.batch, self.capacity, h.shape[-1])
        self.chunk_states[:, start : start + h.shape[1]] = h

    def states_of_chunks(self, first: int, count: int, chunk_size: int) -> Tensor:
        """``(batch, count, chunk_size, dec_dim)`` kept states of chunks ``first...``."""
        assert self.chunk_states is not None
        span = self.chunk_states[:, first * chunk_size : (first + count) * chunk_size]
        return span.reshape(self.batch, count, chunk_size, -1)

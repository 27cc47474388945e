"""RETRO (Borgeaud et al. 2022, arXiv 2112.04426) in one file: read it top to bottom.

Shapes use these letters::

    b  batch                 n  decoder tokens            m  chunk size (64)
    u  chunks with neighbours (n // m)                    k  neighbours per chunk
    r  tokens per neighbour (chunk + continuation, 2m)    d  model width

The decoder is a causal transformer. At ``dec_cross_attn_layers`` a chunked cross-attention
(CCA) lets tokens attend to the encoded neighbours of the *previous* chunk: the neighbours
retrieved with chunk ``u`` reach positions ``(u + 1) * m - 1`` onward, never earlier ones, so no
token sees neighbours retrieved with its own future. The encoder is a bidirectional transformer
over each neighbour that also cross-attends to the decoder states of the chunk that retrieved it;
it runs once, at the first CCA layer, as in the paper.

Positions come from a positional-encoding plugin looked up by name; this file imports none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from retro_platform.errors import ConfigError
from retro_platform.model.cache import DecodingCache, NeighbourKeys, SelfAttentionCache
from retro_platform.model.config import RetroConfig
from retro_platform.model.dropout_attention import causal_attention_with_dropout
from retro_platform.model.feed_forward import FeedForward
from retro_platform.model.loss import linear_cross_entropy
from retro_platform.plugins import get_positional_encoding  # the registry, not a backend
from retro_platform.protocols import AttentionRole, PositionalEncoding

# ---------------------------------------------------------------------------------------------
# helpers


def exists(value: Any) -> bool:
    return value is not None


def mask_value(dtype: torch.dtype) -> float:
    # finite, so that a row whose keys are all masked gives no NaN; halved so that one bias
    # added to it cannot overflow to -inf
    return torch.finfo(dtype).min / 2


@dataclass
class Positions:
    """What one attention needs to place its queries and keys."""

    encoding: PositionalEncoding
    q: Tensor  # (i,) integer positions of the queries
    k: Tensor  # (j,) integer positions of the keys
    bias: Tensor | None  # (1, heads, i, j) additive bias, or None

    @classmethod
    def build(cls, encoding: PositionalEncoding, q: Tensor, k: Tensor | None = None) -> Positions:
        k = q if k is None else k
        bias = encoding.bias(q, k)
        return cls(encoding, q, k, None if bias is None else bias.unsqueeze(0))


# ---------------------------------------------------------------------------------------------
# building blocks


class Attention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention``.

    Self-attention projects queries, keys and values with one matmul; cross-attention
    projects the context once for keys and values.
    """

    def __init__(
        self,
        dim: int,
        *,
        context_dim: int | None = None,
        heads: int,
        dim_head: int,
        dropout: float = 0.0,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.heads, self.dim_head, self.causal, self.dropout = heads, dim_head, causal, dropout
        inner = heads * dim_head
        self.is_cross = exists(context_dim)
        if self.is_cross:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        # (batch, tokens, heads * dim_head) -> (batch, heads, tokens, dim_head)
        return t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        positions: Positions,
        *,
        context: Tensor | None = None,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """``x`` (batch, i, dim); ``context`` (batch, j, context_dim); ``key_mask`` (batch, j),
        True where a key may be attended to."""
        if self.is_cross:
            q = self.to_q(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = map(self._split_heads, (q, k, v))
        q, k = positions.encoding.rotate(q, k, positions.q, positions.k)
        # a view of v would keep the whole fused projection alive until backward; a
        # token-major copy keeps only v (the layout rotary gives q and k)
        v = v.transpose(1, 2).contiguous().transpose(1, 2)
        return self._attend(q, k, v, positions.bias, key_mask)

    # incremental decoding: the same computation for new queries against kept keys and values

    def extend(self, x: Tensor, positions: Positions, cache: SelfAttentionCache) -> Tensor:
        """Self-attention of new tokens ``x`` (batch, i, dim) at ``positions.q`` over every
        earlier token in ``cache`` and themselves (``positions.k``: all of them); their keys
        and values are added to ``cache``."""
        q, k, v = map(self._split_heads, self.to_qkv(x).chunk(3, dim=-1))
        q, k = positions.encoding.rotate(q, k, positions.q, positions.q)
        keys, values = cache.append(k, v)
        return self._attend(q, keys, values, positions.bias, None)

    def context_keys(
        self, context: Tensor, encoding: PositionalEncoding, positions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Cross-attention keys (rotated to their ``positions``) and values of ``context``
        (batch, j, context_dim), each (batch, heads, j, dim_head): computed once per context
        and kept. The encoding turns queries and keys each by their own positions, so the keys
        can be turned once and the queries at every step."""
        k, v = map(self._split_heads, self.to_kv(context).chunk(2, dim=-1))
        no_queries = k[..., :0, :]
        _, k = encoding.rotate(no_queries, k, positions[:0], positions)
        return k, v.contiguous()

    def attend_to(
        self,
        x: Tensor,
        positions: Positions,
        keys: Tensor,
        values: Tensor,
        key_mask: Tensor | None = None,
    ) -> Tensor:
        """Cross-attention of ``x`` to keys and values from :meth:`context_keys`."""
        q = self._split_heads(self.to_q(x))
        q, _ = positions.encoding.rotate(q, keys[..., :0, :], positions.q, positions.k[:0])
        return self._attend(q, keys, values, positions.bias, key_mask)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, key_mask: Tensor | None
    ) -> Tensor:
        i, j = q.shape[-2], k.shape[-2]
        attn_mask = bias
        is_causal = self.causal and attn_mask is None and key_mask is None and i == j
        if self.causal and not is_causal and i > 1:
            # queries are the last i of the j keys: each sees the keys up to its own
            future = torch.ones(i, j, dtype=torch.bool, device=q.device).triu(j - i + 1)
            causal_bias = torch.zeros(i, j, dtype=q.dtype, device=q.device)
            causal_bias = causal_bias.masked_fill(future, mask_value(q.dtype))
            attn_mask = causal_bias if attn_mask is None else attn_mask + causal_bias
        if exists(key_mask):
            pad_bias = torch.zeros(key_mask.shape, dtype=q.dtype, device=q.device)
            pad_bias = pad_bias.masked_fill(~key_mask, mask_value(q.dtype))[:, None, None, :]
            attn_mask = pad_bias if attn_mask is None else attn_mask + pad_bias
        if exists(attn_mask):
            # a 4-d float mask keeps the fused kernels on CPU and GPU
            attn_mask = attn_mask.to(q.dtype).expand(q.shape[0], self.heads, -1, -1)

        dropout_p = self.dropout if self.training else 0.0
        if is_causal and dropout_p > 0 and q.device.type == "cpu":
            # the fused CPU kernel has no dropout; this avoids the quadratic-memory fallback
            out = causal_attention_with_dropout(q, k, v, dropout_p)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
            )
        out = self.to_out(out.transpose(1, 2).flatten(2))
        if exists(key_mask):
            # a query with nothing to attend to gets nothing, not an average of padding
            out = out * key_mask.any(dim=-1, keepdim=True)[..., None].to(out.dtype)
        return out


class ChunkedCrossAttention(nn.Module):
    """Decoder windows attend to the encoded neighbours of the chunk before them.

    The sequence is shifted left by ``m - 1``: window ``u`` covers positions
    ``(u + 1) * m - 1 ... (u + 2) * m - 2`` and attends to the neighbours retrieved with chunk
    ``u``. Positions ``0 ... m - 2`` get no update. All windows attend in one batched call.
    """

    def __init__(self, dim: int, *, chunk_size: int, **attention_kwargs: Any) -> None:
        super().__init__()
        self.chunk_size = chunk_size
        self.attention = Attention(dim, context_dim=dim, **attention_kwargs)

    def forward(
        self, x: Tensor, neighbours: Tensor, neighbour_mask: Tensor | None, positions: Positions
    ) -> Tensor:
        """``x`` (b, n, d); ``neighbours`` (b * u, k * r, d); ``neighbour_mask`` (b * u, k * r)."""
        b, n, d = x.shape
        m, shift = self.chunk_size, self.chunk_size - 1
        u = neighbours.shape[0] // b
        windows = x[:, shift : shift + u * m]
        covered = windows.shape[1]  # the last window may run past the end of the sequence
        windows = F.pad(windows, (0, 0, 0, u * m - covered)).reshape(b * u, m, d)
        out = self.attention(windows, positions, context=neighbours, key_mask=neighbour_mask)
        out = out.reshape(b, u * m, d)[:, :covered]
        return F.pad(out, (0, 0, shift, n - shift - covered))


class EncoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        *,
        context_dim: int,
        heads: int,
        dim_head: int,
        cross_attend: bool,
        attn_dropout: float,
        ff_dropout: float,
        ff_mult: int,
    ) -> None:
        super().__init__()
        attn = dict(heads=heads, dim_head=dim_head, dropout=attn_dropout)
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, **attn)
        self.cross_norm = nn.LayerNorm(dim) if cross_attend else None
        self.cross_attn = Attention(dim, context_dim=context_dim, **attn) if cross_attend else None
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=ff_dropout)

    def forward(
        self,
        y: Tensor,
        chunk_states: Tensor,
        mask: Tensor | None,
        self_positions: Positions,
        cross_positions: Positions,
    ) -> Tensor:
        """``y`` (b * u * k, r, d_enc); ``chunk_states`` (b * u, m, d_dec); ``mask`` like y's tokens."""
        y = y + self.self_attn(self.self_norm(y), self_positions, key_mask=mask)
        if exists(self.cross_attn):
            # all k neighbours of a chunk query the same chunk states: fold them into the query
            # axis instead of repeating the context k times
            groups, r, dim = chunk_states.shape[0], y.shape[1], y.shape[2]
            queries = self.cross_norm(y).reshape(groups, -1, dim)
            update = self.cross_attn(queries, cross_positions, context=chunk_states)
            y = y + update.reshape(-1, r, dim)
        return y + self.ff(self.ff_norm(y))


class DecoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        *,
        heads: int,
        dim_head: int,
        chunk_size: int,
        cross_attend: bool,
        attn_dropout: float,
        ff_dropout: float,
        ff_mult: int,
    ) -> None:
        super().__init__()
        attn = dict(heads=heads, dim_head=dim_head, dropout=attn_dropout)
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, causal=True, **attn)
        self.cross_norm = nn.LayerNorm(dim) if cross_attend else None
        self.cross_attn = (
            ChunkedCrossAttention(dim, chunk_size=chunk_size, **attn) if cross_attend else None
        )
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=ff_mult, dropout=ff_dropout)

    def self_attention_block(self, x: Tensor, positions: Positions) -> Tensor:
        return x + self.self_attn(self.self_norm(x), positions)

    def cross_attention_block(
        self, x: Tensor, h: Tensor, neighbours: Tensor, mask: Tensor | None, positions: Positions
    ) -> Tensor:
        return x + self.cross_attn(h, neighbours, mask, positions)

    def feed_forward_block(self, x: Tensor) -> Tensor:
        return x + self.ff(self.ff_norm(x))


# ---------------------------------------------------------------------------------------------
# the model


class RETRO(nn.Module):
    """A retrieval-enhanced transformer.

    Args:
        num_tokens: vocabulary size.
        max_seq_len: the longest decoder sequence the model accepts.
        enc_dim: width of the neighbour encoder.
        enc_depth: number of encoder layers.
        enc_cross_attn_layers: 1-based encoder layers that cross-attend to the retrieving
            chunk; ``None`` means every layer (the paper).
        dec_depth: number of decoder layers.
        dec_cross_attn_layers: 1-based decoder layers with chunked cross-attention.
        heads: attention heads (encoder and decoder).
        dec_dim: width of the decoder.
        dim_head: width of one attention head.
        enc_attn_dropout, enc_ff_dropout, dec_attn_dropout, dec_ff_dropout: dropout rates.
            Attention dropout acts on attention weights. PyTorch's fused CPU kernel has none, so
            on CPU the decoder's causal self-attention uses a blockwise kernel of our own
            (``dropout_attention.py``, memory linear in the sequence length); attentions with
            an additive bias (ALiBi, T5) fall back to PyTorch's quadratic-memory math path.
        ff_mult: feed-forward hidden width as a multiple of the model width.
        chunk_size: ``m``, tokens per retrieval chunk (64 in the paper).
        neighbour_len: ``r``, tokens per retrieved neighbour: its chunk plus the continuation
            (``2 * chunk_size`` in the paper).
        pad_id: token id of padding, in neighbours (masked out) and in labels (ignored).
        positional_encoding: name of a registered positional-encoding plugin
            (``retro-platform plugins`` lists them).
        positional_encoding_options: keyword options for that plugin.
        checkpoint_activations: recompute activations in the backward pass instead of storing
            them; trades about a third more compute for memory that grows far more slowly.
        loss_chunk_tokens: the loss computes logits for this many tokens at a time, so the full
            ``(b, n, num_tokens)`` logits never exist when ``return_loss=True``.

    ``model.config`` is these arguments as a checked :class:`RetroConfig` (defaults filled in).
    """

    def __init__(
        self,
        *,
        num_tokens: int = 28996,
        max_seq_len: int = 2048,
        enc_dim: int = 896,
        enc_depth: int = 2,
        enc_cross_attn_layers: Sequence[int] | None = None,
        dec_depth: int = 12,
        dec_cross_attn_layers: Sequence[int] = (1, 3, 6, 9),
        heads: int = 8,
        dec_dim: int = 768,
        dim_head: int = 64,
        enc_attn_dropout: float = 0.0,
        enc_ff_dropout: float = 0.0,
        dec_attn_dropout: float = 0.0,
        dec_ff_dropout: float = 0.0,
        ff_mult: int = 4,
        chunk_size: int = 64,
        neighbour_len: int | None = None,
        pad_id: int = 0,
        positional_encoding: str = "rotary",
        positional_encoding_options: dict[str, Any] | None = None,
        checkpoint_activations: bool = False,
        loss_chunk_tokens: int = 2048,
    ) -> None:
        super().__init__()
        self.config = c = RetroConfig(
            num_tokens=num_tokens,
            max_seq_len=max_seq_len,
            enc_dim=enc_dim,
            enc_depth=enc_depth,
            enc_cross_attn_layers=enc_cross_attn_layers,
            dec_depth=dec_depth,
            dec_cross_attn_layers=dec_cross_attn_layers,
            heads=heads,
            dec_dim=dec_dim,
            dim_head=dim_head,
            enc_attn_dropout=enc_attn_dropout,
            enc_ff_dropout=enc_ff_dropout,
            dec_attn_dropout=dec_attn_dropout,
            dec_ff_dropout=dec_ff_dropout,
            ff_mult=ff_mult,
            chunk_size=chunk_size,
            neighbour_len=neighbour_len,
            pad_id=pad_id,
            positional_encoding=positional_encoding,
            positional_encoding_options=positional_encoding_options,
            checkpoint_activations=checkpoint_activations,
            loss_chunk_tokens=loss_chunk_tokens,
        )
        # from here on every setting is read from the checked config

        # one embedding table; the encoder reads it through a projection to its own width
        self.token_emb = nn.Embedding(c.num_tokens, c.dec_dim)
        self.to_encoder_dim = (
            nn.Linear(c.dec_dim, c.enc_dim) if c.enc_dim != c.dec_dim else nn.Identity()
        )
        self.encoder = nn.ModuleList(
            EncoderLayer(
                c.enc_dim,
                context_dim=c.dec_dim,
                heads=c.heads,
                dim_head=c.dim_head,
                cross_attend=layer in c.encoder_cross_layers,
                attn_dropout=c.enc_attn_dropout,
                ff_dropout=c.enc_ff_dropout,
                ff_mult=c.ff_mult,
            )
            for layer in range(1, c.enc_depth + 1)
        )
        self.encoder_norm = nn.LayerNorm(c.enc_dim)
        self.encoder_out = nn.Linear(c.enc_dim, c.dec_dim)

        self.decoder = nn.ModuleList(
            DecoderLayer(
                c.dec_dim,
                heads=c.heads,
                dim_head=c.dim_head,
                chunk_size=c.chunk_size,
                cross_attend=layer in c.dec_cross_attn_layers,
                attn_dropout=c.dec_attn_dropout,
                ff_dropout=c.dec_ff_dropout,
                ff_mult=c.ff_mult,
            )
            for layer in range(1, c.dec_depth + 1)
        )
        self.decoder_norm = nn.LayerNorm(c.dec_dim)
        self.to_logits = nn.Linear(c.dec_dim, c.num_tokens)

        self.apply(_init_weights)
        # built after the initialisation above, so each plugin keeps its own
        self.positions = _build_positional_encodings(c)

    # the settings that code outside reads off a model
    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def neighbour_len(self) -> int:
        return self.config.neighbour_len

    @property
    def pad_id(self) -> int:
        return self.config.pad_id

    # -----------------------------------------------------------------------------------------
    # the parts of a forward pass

    def _run(self, fn, *args):
        # recompute in the backward pass rather than store, when asked and when it matters
        if self.config.checkpoint_activations and self.training and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def encode(self, neighbours: Tensor, chunk_states: Tensor) -> tuple[Tensor, Tensor]:
        """Encode neighbours ``(b, u, k, r)`` conditioned on the decoder states of the chunks that
        retrieved them ``(b, u, m, d_dec)``. Returns ``(b * u, k * r, d_dec)`` and its key mask
        ``(b * u, k * r)``, or None when no neighbour token is padding."""
        b, u, k, r = neighbours.shape
        mask = neighbours != self.config.pad_id
        # on the meta device (FLOP counting) nothing can be read: assume padding
        has_padding = neighbours.is_meta or not bool(mask.all())

        y = self.to_encoder_dim(self.token_emb(neighbours))
        token_positions = torch.arange(r, device=neighbours.device)
        y = self.positions["encoder"].embed(y, token_positions).reshape(b * u * k, r, -1)
        chunk_states = chunk_states.reshape(b * u, self.config.chunk_size, -1)

        self_positions = Positions.build(self.positions["encoder"], token_positions)
        cross_positions = Positions.build(
            self.positions["encoder_cross"],
            token_positions.repeat(k),  # every neighbour restarts at position 0
            torch.arange(self.config.chunk_size, device=neighbours.device),
        )
        flat_mask = mask.reshape(b * u * k, r) if has_padding else None
        mask = mask.reshape(b * u, k * r) if has_padding else None
        for layer in self.encoder:
            y = self._run(layer, y, chunk_states, flat_mask, self_positions, cross_positions)
        y = self.encoder_out(self.encoder_norm(y))
        return y.reshape(b * u, k * r, -1), mask

    def forward(
        self,
        seq: Tensor,
        retrieved: Tensor | None = None,
        return_loss: bool = False,
    ) -> Tensor:
        """Run the model.

        Args:
            seq: token ids ``(b, n)``, or ``(b, n + 1)`` with ``return_loss=True`` (the input is
                ``seq[:, :-1]`` and the labels ``seq[:, 1:]``).
            retrieved: neighbour token ids ``(b, n // m, k, r)`` (or ``(b, n // m, r)`` for one
                neighbour), chunk ``u``'s neighbours at index ``u``; a trailing partial chunk
                needs none (if one is given it is ignored: it could only affect positions past
                the end). ``None`` runs a plain causal decoder.
            return_loss: return the mean next-token cross-entropy instead of logits.

        Returns:
            the loss (a scalar) or logits ``(b, n, num_tokens)``.
        """
        if return_loss:
            seq, labels = seq[:, :-1], seq[:, 1:]
        b, n = seq.shape
        if n > self.config.max_seq_len:
            raise ValueError(
                f"sequence of {n} tokens is longer than max_seq_len={self.config.max_seq_len}"
            )
        neighbours = self._check_retrieved(retrieved, b, n)

        positions = torch.arange(n, device=seq.device)
        x = self.positions["decoder"].embed(self.token_emb(seq), positions)
        self_positions = Positions.build(self.positions["decoder"], positions)

        encoded = None
        for layer in self.decoder:
            x = self._run(layer.self_attention_block, x, self_positions)
            if exists(layer.cross_attn) and exists(neighbours):
                h = layer.cross_norm(x)
                if encoded is None:
                    u, m = neighbours.shape[1], self.config.chunk_size
                    chunk_states = h[:, : u * m].reshape(b, u, m, -1)
                    encoded, mask = self.encode(neighbours, chunk_states)
                    cca_positions = Positions.build(
                        self.positions["chunked_cross"],
                        torch.arange(m, device=seq.device) + m - 1,
                        torch.arange(self.config.neighbour_len, device=seq.device).repeat(
                            neighbours.shape[2]
                        ),
                    )
                x = self._run(layer.cross_attention_block, x, h, encoded, mask, cca_positions)
            x = self._run(layer.feed_forward_block, x)
        x = self.decoder_norm(x)

        if not return_loss:
            return self.to_logits(x)
        return linear_cross_entropy(
            x.reshape(b * n, -1),
            self.to_logits.weight,
            self.to_logits.bias,
            labels.reshape(b * n),
            ignore_index=self.config.pad_id,
            chunk_tokens=self.config.loss_chunk_tokens,
        )

    def _check_retrieved(self, retrieved: Tensor | None, b: int, n: int) -> Tensor | None:
        """Neighbours ``(b, u, k, r)`` for the ``u = n // m`` full chunks, or None."""
        if retrieved is None:
            return None
        if retrieved.ndim == 3:
            retrieved = retrieved.unsqueeze(2)  # one neighbour per chunk
        if retrieved.ndim != 4:
            raise ValueError(
                "retrieved must be (batch, chunks, neighbours, tokens), "
                f"got shape {tuple(retrieved.shape)}"
            )
        u, partial = divmod(n, self.config.chunk_size)
        rb, ru, _, rr = retrieved.shape
        if rb != b or rr != self.config.neighbour_len or ru not in (u, u + (partial > 0)):
            expected = f"({b}, {u}, k, {self.config.neighbour_len})"
            raise ValueError(
                f"retrieved has shape {tuple(retrieved.shape)}; a sequence of {n} tokens with "
                f"chunk_size={self.config.chunk_size} needs {expected}"
            )
        return retrieved[:, :u] if u > 0 else None

    # -----------------------------------------------------------------------------------------
    # incremental decoding: the forward pass a few tokens at a time, with a cache

    def new_cache(self, batch: int, *, retrieval: bool = True) -> DecodingCache:
        """An empty :class:`DecodingCache` for ``batch`` rows decoded in step (see
        :meth:`decode`); ``retrieval=False`` decodes as a plain causal decoder."""
        layers = [SelfAttentionCache(self.config.max_seq_len) for _ in self.decoder]
        return DecodingCache(batch, self.config.max_seq_len, retrieval, layers)

    @torch.no_grad()
    def decode(
        self, tokens: Tensor, cache: DecodingCache, retrieved: Tensor | None = None
    ) -> Tensor:
        """Feed the next tokens ``(b, s)`` of every row; return their logits ``(b, s, vocab)``.

        Equal, up to float rounding, to the last ``s`` positions of :meth:`forward` over all the
        tokens fed so far with the neighbours of every completed chunk. ``retrieved`` holds the
        neighbours ``(b, c, k, r)`` of the ``c`` chunks that these tokens complete (a chunk
        completes with its last token, whose own prediction already sees its neighbours), in
        order; give it exactly when ``c > 0`` and the cache was made with retrieval. Each
        completed chunk's neighbours are encoded once; later steps reuse their keys.
        """
        c = self.config
        m = c.chunk_size
        b, s = tokens.shape
        t0, t1 = cache.length, cache.length + s
        if b != cache.batch:
            raise ValueError(f"the cache was made for {cache.batch} rows; {b} were given")
        if t1 > c.max_seq_len:
            raise ValueError(f"decoding to {t1} tokens exceeds max_seq_len={c.max_seq_len}")
        first, completed = t0 // m, t1 // m - t0 // m  # chunks that these tokens complete
        neighbours = self._check_step_neighbours(retrieved, cache, b, completed)

        positions = torch.arange(t0, t1, device=tokens.device)
        x = self.positions["decoder"].embed(self.token_emb(tokens), positions)
        self_positions = Positions.build(
            self.positions["decoder"], positions, torch.arange(t1, device=tokens.device)
        )
        encoded = None
        for index, layer in enumerate(self.decoder):
            x = x + layer.self_attn.extend(
                layer.self_norm(x), self_positions, cache.self_attention[index]
            )
            if exists(layer.cross_attn) and cache.retrieval:
                h = layer.cross_norm(x)
                if encoded is None:  # the first CCA layer: encode what completed here
                    cache.keep_states(h, t0)
                    encoded = ()
                    if completed:
                        states = cache.states_of_chunks(first, completed, m)
                        encoded = self.encode(neighbours, states)
                x = x + self._cached_chunked_cross(
                    layer.cross_attn, index, h, encoded, cache, first, t0
                )
            x = layer.feed_forward_block(x)
        return self.to_logits(self.decoder_norm(x))

    def _check_step_neighbours(
        self, retrieved: Tensor | None, cache: DecodingCache, b: int, completed: int
    ) -> Tensor | None:
        if not cache.retrieval:
            if retrieved is not None:
                raise ValueError("this cache decodes with retrieval off; give no neighbours")
            return None
        if completed == 0:
            if retrieved is not None and retrieved.shape[1] != 0:
                raise ValueError("no chunk completes in this step; give no neighbours")
            return None
        if retrieved is None:
            raise ValueError(f"{completed} chunk(s) complete in this step: give their neighbours")
        if retrieved.ndim == 3:
            retrieved = retrieved.unsqueeze(2)
        expected = (b, completed, retrieved.shape[2], self.config.neighbour_len)
        if retrieved.ndim != 4 or tuple(retrieved.shape) != expected:
            raise ValueError(
                f"retrieved has shape {tuple(retrieved.shape)}; this step needs "
                f"({b}, {completed}, k, {self.config.neighbour_len})"
            )
        return retrieved

    def _cached_chunked_cross(
        self,
        cca: ChunkedCrossAttention,
        index: int,
        h: Tensor,
        encoded: tuple[Tensor, Tensor | None] | tuple[()],
        cache: DecodingCache,
        first: int,
        t0: int,
    ) -> Tensor:
        """CCA of the new positions ``t0...`` (their states ``h``): a position ``p`` attends to
        the neighbours of chunk ``(p - m + 1) // m`` (none before ``m - 1``), at the same
        relative positions as in :class:`ChunkedCrossAttention`."""
        m, b = self.config.chunk_size, cache.batch
        t1 = t0 + h.shape[1]
        encoding = self.positions["chunked_cross"]
        available = {}
        if index in cache.neighbours:  # the chunk completed before this step
            available[cache.neighbours[index].chunk] = cache.neighbours[index]
        if encoded:
            states, mask = encoded
            k_positions = torch.arange(self.config.neighbour_len, device=h.device).repeat(
                states.shape[1] // self.config.neighbour_len
            )  # every neighbour from position 0, as in the full pass
            keys, values = cca.attention.context_keys(states, encoding, k_positions)
            count = keys.shape[0] // b
            keys = keys.unflatten(0, (b, count))
            values = values.unflatten(0, (b, count))
            mask = None if mask is None else mask.unflatten(0, (b, count))
            for u in range(count):
                part = None if mask is None else mask[:, u]
                available[first + u] = NeighbourKeys(
                    first + u, keys[:, u], values[:, u], part, k_positions
                )
            cache.neighbours[index] = available[first + count - 1]

        parts, start = [], max(t0, m - 1)
        if start > t0:  # positions before m - 1 attend to nothing
            parts.append(h.new_zeros(b, min(start, t1) - t0, h.shape[-1]))
        while start < t1:
            u = (start - m + 1) // m
            end = min(t1, (u + 2) * m - 1)  # the end of window u
            neighbour = available[u]
            q = torch.arange(start - u * m, end - u * m, device=h.device)  # offset + m - 1
            positions = Positions.build(encoding, q, neighbour.positions)
            parts.append(
                cca.attention.attend_to(
                    h[:, start - t0 : end - t0],
                    positions,
                    neighbour.keys,
                    neighbour.values,
                    neighbour.mask,
                )
            )
            start = end
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    # -----------------------------------------------------------------------------------------
    # RETRO-fitting

    def retrofit(self, decoder_state_dict: dict[str, Tensor] | None = None) -> int:
        """Freeze the decoder and train only the retrieval path, as the paper's RETRO-fitting.

        Optionally loads the weights of a decoder-only model first: a state dict with this
        model's decoder parameter names (a RETRO with retrieval off, or one converted to it).
        The frozen part is everything except the encoder and the chunked cross-attention
        layers. Returns the number of trainable parameters.
        """
        if decoder_state_dict is not None:
            own = self.state_dict()
            retrieval = {name for name in own if _is_retrieval_parameter(name)}
            unknown = sorted(set(decoder_state_dict) - set(own))
            missing = sorted(set(own) - set(decoder_state_dict) - retrieval)
            if unknown or missing:
                raise ValueError(
                    "the decoder weights do not match this RETRO: "
                    f"unknown {unknown[:5]}, missing {missing[:5]}"
                )
            self.load_state_dict(decoder_state_dict, strict=False)
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(_is_retrieval_parameter(name))
        return self.num_trainable_parameters()

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# construction


def _is_retrieval_parameter(name: str) -> bool:
    """The parameters RETRO-fitting trains: the encoder side and every CCA."""
    retrieval_prefixes = (
        "encoder.",
        "encoder_norm.",
        "encoder_out.",
        "to_encoder_dim.",
        "positions.encoder.",
        "positions.encoder_cross.",
        "positions.chunked_cross.",
    )
    return name.startswith(retrieval_prefixes) or ".cross_attn." in name or ".cross_norm." in name


def _init_weights(module: nn.Module) -> None:
    # Width-aware: a projection's outputs start at about unit scale whatever its fan-in, and
    # token embeddings at unit scale. GPT-2's fixed std of 0.02 suits widths near 768; at the
    # widths this platform trains on CPU (64-256) it left attention logits so small that the
    # retrieval path never learned: a copy-from-the-neighbour task stayed at chance for 2,400
    # steps with it and is solved in 300 with this (tests/model/test_retrieval_learning.py).
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=module.in_features**-0.5)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=1.0)


def _build_positional_encodings(config: RetroConfig) -> nn.ModuleDict:
    """One encoding per attention role, from the plugin named ``config.positional_encoding``."""
    c, name = config, config.positional_encoding
    factory = get_positional_encoding(name).factory
    r, m = c.neighbour_len, c.chunk_size
    roles: dict[AttentionRole, dict[str, Any]] = {
        "decoder": dict(dim=c.dec_dim, max_positions=c.max_seq_len, causal=True),
        "encoder": dict(dim=c.enc_dim, max_positions=r, causal=False),
        "encoder_cross": dict(dim=c.enc_dim, max_positions=max(r, m), causal=False),
        "chunked_cross": dict(dim=c.dec_dim, max_positions=max(r, 2 * m - 1), causal=False),
    }
    built = {}
    for role, kwargs in roles.items():
        try:
            built[role] = factory(
                role=role,
                heads=c.heads,
                dim_head=c.dim_head,
                **kwargs,
                **c.positional_encoding_options,
            )
        except (TypeError, ValueError) as error:
            raise ConfigError(f"positional encoding {name!r}: {error}") from error
        if not isinstance(built[role], PositionalEncoding):
            # nn.ModuleDict takes None without a word: the model then fails at its first forward
            raise ConfigError(
                f"positional encoding {name!r}: its factory returned "
                f"{type(built[role]).__name__} for role {role!r}, not a "
                f"retro_platform.protocols.PositionalEncoding; this is a bug in its plugin "
                f"({get_positional_encoding(name).distribution})"
            )
    return nn.ModuleDict(built)

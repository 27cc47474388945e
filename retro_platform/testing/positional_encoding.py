"""The positional-encoding contract: what every
:class:`~retro_platform.protocols.PositionalEncoding` promises, for each attention role.

Subclass it in the plugin's tests::

    class TestMyEncoding(PositionalEncodingContract):
        factory = MyEncoding
        kwargs = {"base": 100.0}  # the user's options: [model] positional_encoding_options
        registered_as = "my-encoding"
        relative = True  # attention scores depend only on q_pos - k_pos
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
from torch import Tensor

from retro_platform.protocols.positional_encoding import AttentionRole, PositionalEncoding
from retro_platform.testing._common import PluginContract

ROLES: tuple[AttentionRole, ...] = ("decoder", "encoder", "encoder_cross", "chunked_cross")


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


class PositionalEncodingContract(PluginContract):
    """The positional-encoding rules as pytest tests, run for every attention role."""

    family = "positional_encodings"
    #: The plugin's own keyword options (the model passes ``positional_encoding_options``).
    kwargs: ClassVar[dict[str, Any]] = {}
    #: The protocol's arguments the model passes (small, so the tests run in milliseconds).
    dim: ClassVar[int] = 16
    heads: ClassVar[int] = 2
    dim_head: ClassVar[int] = 8
    max_positions: ClassVar[int] = 32
    #: Whether attention (``rotate`` and ``bias``) sees only ``q_pos - k_pos``: true of every
    #: relative encoding, and trivially of one that acts only in ``embed``.
    relative: ClassVar[bool] = True

    def make_encoding(self, role: AttentionRole, seed: int = 0) -> PositionalEncoding:
        """The plugin built as the model builds it for ``role`` (``seed`` fixes its init)."""
        torch.manual_seed(seed)
        return self.factory(
            role=role,
            dim=self.dim,
            heads=self.heads,
            dim_head=self.dim_head,
            max_positions=self.max_positions,
            causal=role == "decoder",
            **self.kwargs,
        )

    def qk(self, i: int, j: int) -> tuple[Tensor, Tensor]:
        """Queries ``(batch, heads, i, dim_head)`` and keys ``(batch, heads, j, dim_head)``."""
        generator = torch.Generator().manual_seed(1)
        shape = (2, self.heads)
        return (
            torch.randn(*shape, i, self.dim_head, generator=generator),
            torch.randn(*shape, j, self.dim_head, generator=generator),
        )

    @pytest.mark.parametrize("role", ROLES)
    def test_builds_for_every_role(self, role: AttentionRole) -> None:
        """Rule: the model's keyword arguments (plus the plugin's own) build a
        ``PositionalEncoding`` module that keeps them."""
        encoding = self.make_encoding(role)
        assert isinstance(encoding, PositionalEncoding), (
            "rule: the factory builds a retro_platform.protocols.PositionalEncoding"
        )
        kept = (encoding.role, encoding.dim, encoding.heads, encoding.dim_head)
        assert kept == (role, self.dim, self.heads, self.dim_head), (
            "rule: the encoding keeps role, dim, heads and dim_head (call super().__init__)"
        )
        assert encoding.causal == (role == "decoder"), "rule: the encoding keeps causal"

    @pytest.mark.parametrize("role", ROLES)
    def test_embed_keeps_the_shape(self, role: AttentionRole) -> None:
        """Rule: ``embed`` maps ``(..., n, dim)`` embeddings at ``(n,)`` positions to the same
        shape and dtype, finite, for every position below ``max_positions``."""
        encoding = self.make_encoding(role)
        positions = torch.arange(self.max_positions)
        for shape in [(3, self.max_positions, self.dim), (2, 2, self.max_positions, self.dim)]:
            x = torch.randn(shape)
            out = encoding.embed(x, positions)
            assert out.shape == x.shape and out.dtype == x.dtype, (
                f"rule: embed keeps the shape {tuple(x.shape)} and dtype; got {tuple(out.shape)}"
            )
            assert torch.isfinite(out).all(), "rule: embed gives finite values"

    @pytest.mark.parametrize("role", ROLES)
    def test_embed_acts_on_each_token_alone(self, role: AttentionRole) -> None:
        """Rule: ``embed`` of a token depends on that token and its position alone: mixing
        tokens would leak later tokens into earlier ones and break causality."""
        encoding = self.make_encoding(role)
        x, positions = torch.randn(2, 6, self.dim), torch.tensor([0, 1, 2, 9, 10, 11])
        whole = encoding.embed(x, positions)
        for token in range(6):
            alone = encoding.embed(x[:, token : token + 1], positions[token : token + 1])
            assert _close(alone, whole[:, token : token + 1]), (
                "rule: embed acts on each token alone (no mixing across positions)"
            )

    @pytest.mark.parametrize("role", ROLES)
    def test_rotate_keeps_the_shapes(self, role: AttentionRole) -> None:
        """Rule: ``rotate`` returns queries ``(..., heads, i, dim_head)`` and keys
        ``(..., heads, j, dim_head)`` of the shapes and dtype it was given."""
        encoding = self.make_encoding(role)
        q, k = self.qk(5, 7)
        rq, rk = encoding.rotate(q, k, torch.arange(5) + 2, torch.arange(7))
        assert rq.shape == q.shape and rk.shape == k.shape, "rule: rotate keeps the shapes"
        assert rq.dtype == q.dtype and rk.dtype == k.dtype, "rule: rotate keeps the dtype"
        assert torch.isfinite(rq).all() and torch.isfinite(rk).all(), "rule: rotate is finite"

    @pytest.mark.parametrize("role", ROLES)
    def test_rotate_turns_each_side_by_its_own_positions(self, role: AttentionRole) -> None:
        """Rule: ``rotate`` turns queries by their positions alone and keys by theirs, token
        by token, and takes an empty other side (incremental decoding relies on it)."""
        encoding = self.make_encoding(role)
        q, k = self.qk(4, 6)
        q_pos, k_pos = torch.tensor([3, 4, 5, 6]), torch.arange(6)
        rq, rk = encoding.rotate(q, k, q_pos, k_pos)
        only_q, empty_k = encoding.rotate(q, k[..., :0, :], q_pos, k_pos[:0])
        empty_q, only_k = encoding.rotate(q[..., :0, :], k, q_pos[:0], k_pos)
        assert _close(only_q, rq) and _close(only_k, rk), (
            "rule: rotate turns queries and keys independently (an empty other side works)"
        )
        assert empty_k.shape[-2] == 0 and empty_q.shape[-2] == 0, (
            "rule: rotate returns an empty side empty"
        )
        last_q, _ = encoding.rotate(q[..., -1:, :], k[..., :0, :], q_pos[-1:], k_pos[:0])
        assert _close(last_q, rq[..., -1:, :]), (
            "rule: rotate turns each token by its own position alone (a query decoded alone "
            "gets what it gets in the sequence)"
        )

    @pytest.mark.parametrize("role", ROLES)
    def test_bias_is_none_or_heads_by_i_by_j(self, role: AttentionRole) -> None:
        """Rule: ``bias`` is None or a finite float ``(heads, i, j)`` tensor (the model adds
        its own causal mask; an infinite bias would turn a fully masked row into NaN)."""
        bias = self.make_encoding(role).bias(torch.arange(5) + 3, torch.arange(7))
        if bias is None:
            return
        assert isinstance(bias, Tensor) and bias.shape == (self.heads, 5, 7), (
            f"rule: bias is (heads, i, j) = {(self.heads, 5, 7)}, got "
            f"{getattr(bias, 'shape', bias)}"
        )
        assert bias.is_floating_point() and torch.isfinite(bias).all(), "rule: bias is finite"

    @pytest.mark.parametrize("role", ROLES)
    def test_attention_sees_only_relative_positions(self, role: AttentionRole) -> None:
        """Rule: (where :attr:`relative`) shifting query and key positions by the same amount
        changes no attention score: rotated dot products and the bias see only
        ``q_pos - k_pos``."""
        if not self.relative:
            pytest.skip("relative = False: attention sees absolute positions")
        encoding = self.make_encoding(role)
        q, k = self.qk(4, 6)
        q_pos, k_pos = torch.tensor([5, 6, 7, 8]), torch.arange(6)
        shift = self.max_positions // 2 - 8

        def scores(shift: int) -> Tensor:
            rq, rk = encoding.rotate(q, k, q_pos + shift, k_pos + shift)
            return rq @ rk.transpose(-1, -2)

        assert _close(scores(0), scores(shift)), (
            "rule: relative encodings are invariant to shifting both positions (rotate)"
        )
        bias, shifted = encoding.bias(q_pos, k_pos), encoding.bias(q_pos + shift, k_pos + shift)
        assert (bias is None) == (shifted is None), "rule: bias is None for every position"
        if bias is not None:
            assert _close(bias, shifted), (
                "rule: relative encodings are invariant to shifting both positions (bias)"
            )

    @pytest.mark.parametrize("role", ROLES)
    def test_state_dict_round_trip(self, role: AttentionRole) -> None:
        """Rule: loading one instance's ``state_dict`` into a fresh instance (built with
        another seed) makes it compute the same ``embed``, ``rotate`` and ``bias``."""
        saved, fresh = self.make_encoding(role, seed=0), self.make_encoding(role, seed=1)
        fresh.load_state_dict(saved.state_dict())
        x, positions = torch.randn(2, 6, self.dim), torch.arange(6)
        q, k = self.qk(6, 6)
        assert _close(fresh.embed(x, positions), saved.embed(x, positions)), (
            "rule: state_dict round-trip: embed is the same after loading"
        )
        for a, b in zip(
            fresh.rotate(q, k, positions, positions),
            saved.rotate(q, k, positions, positions),
            strict=True,
        ):
            assert _close(a, b), "rule: state_dict round-trip: rotate is the same after loading"
        bias_a, bias_b = fresh.bias(positions, positions), saved.bias(positions, positions)
        assert (bias_a is None and bias_b is None) or _close(bias_a, bias_b), (
            "rule: state_dict round-trip: bias is the same after loading"
        )

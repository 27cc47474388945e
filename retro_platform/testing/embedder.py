"""The embedder contract: what every :class:`~retro_platform.protocols.Embedder` promises.

Subclass it in the plugin's tests::

    class TestMyEmbedder(EmbedderContract):
        factory = MyEmbedder
        options = {"dimension": 64}
        registered_as = "my-embedder"
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from retro_platform.protocols.embedder import Embedder
from retro_platform.testing._common import OptionsContract

#: Code, prose, a single character, the empty text, non-ASCII text and repeated whitespace.
TEXTS: tuple[str, ...] = (
    "def read_file(path):\n    with open(path) as handle:\n        return handle.read()",
    "Return the square root of x, raising ValueError for negative numbers.",
    "x",
    "",
    "Ünïcödé text — with “quotes” and 日本語",
    "import os, sys\nimport   json",
)


class EmbedderContract(OptionsContract):
    """The embedder rules as pytest tests; set :attr:`factory` and the knobs below."""

    family = "embedders"
    #: Texts to embed; include the cases the plugin must handle.
    texts: ClassVar[Sequence[str]] = TEXTS
    #: How far a text embedded alone may drift from the same text embedded in a batch
    #: (a neural model pads batches; float rounding differs slightly).
    atol: ClassVar[float] = 1e-5

    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls, tmp_path_factory: pytest.TempPathFactory) -> Embedder:
        """The plugin built as the core builds it, ``factory(options)``, once per class (a
        neural model takes seconds to load)."""
        return cls.factory(cls().make_options(tmp_path_factory.mktemp("embedder")))

    def test_dimension_is_a_positive_int(self, embedder: Embedder) -> None:
        """Rule: ``dimension`` is a positive int (known before the first ``embed``)."""
        dimension = embedder.dimension
        assert isinstance(dimension, int | np.integer) and dimension > 0, (
            f"rule: dimension is a positive int, got {dimension!r}"
        )

    def test_embed_gives_float32_rows_of_dimension(self, embedder: Embedder) -> None:
        """Rule: ``embed`` returns a ``(len(texts), dimension)`` float32 array of finite values."""
        vectors = embedder.embed(list(self.texts))
        assert isinstance(vectors, np.ndarray), "rule: embed returns a numpy array"
        assert vectors.shape == (len(self.texts), embedder.dimension), (
            f"rule: embed returns (len(texts), dimension) = "
            f"{(len(self.texts), embedder.dimension)}, got {vectors.shape}"
        )
        assert vectors.dtype == np.float32, f"rule: vectors are float32, got {vectors.dtype}"
        assert np.isfinite(vectors).all(), "rule: vectors are finite"

    def test_an_empty_batch(self, embedder: Embedder) -> None:
        """Rule: no texts give a ``(0, dimension)`` float32 array."""
        vectors = embedder.embed([])
        assert vectors.shape == (0, embedder.dimension) and vectors.dtype == np.float32, (
            f"rule: an empty batch gives (0, dimension) float32, got {vectors.shape} "
            f"{vectors.dtype}"
        )

    def test_deterministic(self, embedder: Embedder) -> None:
        """Rule: embedding the same texts again gives the same vectors."""
        first, second = embedder.embed(list(self.texts)), embedder.embed(list(self.texts))
        assert np.allclose(first, second, rtol=0, atol=self.atol), (
            "rule: embed is deterministic for a given text"
        )

    def test_a_text_alone_equals_it_in_a_batch(self, embedder: Embedder) -> None:
        """Rule: a text's vector does not depend on the other texts of the call, nor on its
        place in it (the core embeds stored chunks in batches and queries alone)."""
        texts = list(self.texts)
        batched = embedder.embed(texts)
        alone = np.concatenate([embedder.embed([text]) for text in texts])
        reversed_rows = embedder.embed(texts[::-1])[::-1]
        assert np.allclose(alone, batched, rtol=0, atol=self.atol), (
            "rule: a text embedded alone gets the vector it gets in a batch"
        )
        assert np.allclose(reversed_rows, batched, rtol=0, atol=self.atol), (
            "rule: embed returns rows in the order of the texts"
        )

    def test_normalized_is_honoured(self, embedder: Embedder) -> None:
        """Rule: when ``normalized`` is true every vector has unit length (a text with
        nothing to embed may get the zero vector)."""
        if not embedder.normalized:
            pytest.skip("the embedder does not declare normalized vectors")
        norms = np.linalg.norm(embedder.embed(list(self.texts)), axis=1)
        unit_or_zero = np.isclose(norms, 1.0, atol=1e-4) | (norms == 0)
        assert unit_or_zero.all(), (
            f"rule: normalized = True means unit-length vectors; norms {norms.round(4)}"
        )

    def test_batch_size_is_a_positive_int(self, embedder: Embedder) -> None:
        """Rule: ``batch_size`` (texts the core passes per call) is a positive int."""
        size = embedder.batch_size
        assert isinstance(size, int) and size > 0, f"rule: batch_size is a positive int: {size!r}"

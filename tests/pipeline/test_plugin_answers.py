"""A third-party corpus reader, tokenizer, embedder or retriever that breaks its protocol is stopped with one line that
names it and the rule, before its answer is stored: NaN vectors, a search of the wrong shape,
ids that were never stored. Without the checks these were stored silently as wrong neighbours
(or failed far away with a traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from retro_platform.cli import cli
from tests.pipeline.helpers import write_experiment

BAD_PLUGINS = """
import numpy as np

from retro_platform import hookimpl
from retro_platform.default_plugins.embedders.hashing import HashingEmbedder
from retro_platform.default_plugins.retrievers.faiss_flat import FaissFlatRetriever as FaissFlat
from retro_platform.default_plugins.corpus_readers.text_files import TextFilesReader
from retro_platform.default_plugins.tokenizers.byte_level import ByteTokenizer
from retro_platform.protocols import Encoding, SourceDocument


class NumberedIds(TextFilesReader):
    def documents(self):
        for number, document in enumerate(super().documents()):
            yield SourceDocument(number, document.data)


class TextData(TextFilesReader):
    def documents(self):
        for document in super().documents():
            yield SourceDocument(document.external_id, document.data.decode())


class ObjectMetadata(TextFilesReader):
    def documents(self):
        for document in super().documents():
            yield SourceDocument(document.external_id, document.data, metadata={"size": 1})


@hookimpl
def register_corpus_readers(register):
    register("numbered-ids", NumberedIds)
    register("text-data", TextData)
    register("object-metadata", ObjectMetadata)


class SmallVocabulary(ByteTokenizer):  # byte ids go up to 256
    @property
    def vocab_size(self):
        return 100


class PaddingTokens(ByteTokenizer):
    def encode(self, text):
        encoding = super().encode(text)
        return Encoding(encoding.ids * 0 + self.pad_id, encoding.starts)


class ReversedStarts(ByteTokenizer):
    def encode(self, text):
        encoding = super().encode(text)
        return Encoding(encoding.ids, encoding.starts[::-1].copy())


class NanEmbedder(HashingEmbedder):
    def embed(self, texts):
        vectors = super().embed(texts)
        vectors[-1, 0] = np.nan  # one vector of every batch, as an fp16 overflow would
        return vectors


class NarrowSearch(FaissFlat):
    def search(self, queries, k):  # one column, whatever k is asked
        scores, ids = super().search(queries, k)
        return scores[:, :1], ids[:, :1]


class StrayIds(FaissFlat):
    def search(self, queries, k):  # ids it never stored
        scores, ids = super().search(queries, k)
        return scores, np.where(ids >= 0, ids + 10**9, ids)


@hookimpl
def register_tokenizers(register):
    register("small-vocabulary", SmallVocabulary)
    register("padding-tokens", PaddingTokens)
    register("reversed-starts", ReversedStarts)


class MissingModel(HashingEmbedder):
    def __init__(self, options):
        raise ValueError("no model file at /models/x")


@hookimpl
def register_embedders(register):
    register("nan-hashing", NanEmbedder)
    register("missing-model", MissingModel)


@hookimpl
def register_retrievers(register):
    register("narrow-search", NarrowSearch)
    register("stray-ids", StrayIds)
"""


def _index(path: Path, command: str = "index") -> str:
    result = CliRunner().invoke(cli, [command, str(path), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return error


@pytest.fixture
def experiment(tmp_path: Path, corpus_dir: Path, plugin_dist, third_party_plugins):
    plugin_dist("retro-platform-bad-answers", BAD_PLUGINS)

    def make(ingest: bool = True, **tables) -> Path:
        path = write_experiment(tmp_path, corpus_dir, **tables)
        if ingest:
            result = CliRunner().invoke(cli, ["ingest", str(path), "--no-progress"])
            assert result.exit_code == 0, result.output
        return path

    return make


def test_an_embedder_that_returns_nan_is_refused(experiment) -> None:
    path = experiment(embedder={"name": "nan-hashing", "dimension": 64})
    error = _index(path)
    assert "embedder 'nan-hashing' returned vectors with NaN or infinite values" in error


@pytest.mark.parametrize(
    ("retriever", "said"),
    [
        ("narrow-search", "retriever 'narrow-search': search returned scores ("),
        ("stray-ids", "retriever 'stray-ids': search returned ids that were never stored"),
    ],
)
@pytest.mark.parametrize("exclude_same_document", [True, False])
def test_a_retriever_whose_search_breaks_the_protocol_is_named(
    experiment, retriever: str, said: str, exclude_same_document: bool
) -> None:
    retrieval = {"chunk_size": 32, "neighbours": 2, "validation_fraction": 0.0}
    path = experiment(
        retriever={"name": retriever},
        retrieval={**retrieval, "exclude_same_document": exclude_same_document},
    )
    assert said in _index(path)
    # the index was built and stored; a search with it is refused too, in one line
    result = CliRunner().invoke(cli, ["search", str(path), "import os", "-k", "2"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error:")
    if retriever == "narrow-search":
        assert said in result.output


@pytest.mark.parametrize(
    ("tokenizer", "said"),
    [
        ("small-vocabulary", "is outside its vocabulary (vocab_size 100: ids 0 .. 99)"),
        ("padding-tokens", "produced its padding id 0"),
        ("reversed-starts", "token starts must be non-decreasing character offsets"),
    ],
)
def test_a_tokenizer_whose_encodings_break_the_protocol_stops_ingest(
    experiment, tokenizer: str, said: str
) -> None:
    # without the check the ids were stored and training failed with an IndexError in the
    # embedding (or, for starts, the chunk texts were not the chunks' tokens: no error at all)
    path = experiment(ingest=False, tokenizer={"name": tokenizer})
    error = _index(path, "ingest")
    assert f"tokenizer {tokenizer!r} on document " in error and said in error


@pytest.mark.parametrize(
    ("reader", "said"),
    [
        ("numbered-ids", "a document's external_id must be a non-empty str"),
        ("text-data", "data must be the raw bytes, got str"),
        ("object-metadata", "metadata must be a dict of str to str or None"),
    ],
)
def test_a_corpus_reader_whose_documents_break_the_protocol_stops_ingest(
    experiment, reader: str, said: str
) -> None:
    # without the check: numbered ids were stored as text and the next ingest failed on the
    # unique key with a traceback; str data an AttributeError; metadata a "database" error
    path = experiment(ingest=False)  # [corpus] is text-files: swap in the subclass
    path.write_text(path.read_text().replace('name = "text-files"', f'name = "{reader}"'))
    error = _index(path, "ingest")
    assert f"corpus reader {reader!r}" in error and said in error


def test_an_error_raised_in_a_plugins_code_ends_with_a_line_that_names_the_plugin(
    experiment,
) -> None:
    # the traceback names files only: the last line says whose they are
    path = experiment(embedder={"name": "missing-model"})
    result = CliRunner().invoke(cli, ["index", str(path), "--no-progress"])
    assert result.exit_code == 1, result.output
    *traceback, last = result.stderr.splitlines()
    assert "Traceback (most recent call last):" in traceback
    assert 'raise ValueError("no model file at /models/x")' in "\n".join(traceback)
    assert last == (
        "Error: the error above was raised in plugin 'retro_platform_bad_answers' "
        "(retro-platform-bad-answers 1.0): if its options are right, report it to the "
        "plugin's author (ValueError: no model file at /models/x); to disable it, set "
        "RETRO_PLATFORM_DISABLE_PLUGINS=retro-platform-bad-answers or run: retro-platform "
        "uninstall retro-platform-bad-answers"
    )


def test_an_error_outside_any_plugins_code_names_no_plugin(experiment) -> None:
    from retro_platform.plugins import load_plugins, plugin_in_traceback

    experiment(ingest=False)  # the bad plugins installed
    load_plugins()
    try:
        raise ValueError("a bug of the platform")
    except ValueError as error:
        assert plugin_in_traceback(error) is None

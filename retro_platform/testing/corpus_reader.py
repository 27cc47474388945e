"""The corpus-reader contract: what every :class:`~retro_platform.protocols.CorpusReader`
promises.

Subclass it in the plugin's tests and say how to make a source for it::

    class TestMyReader(CorpusReaderContract):
        factory = MyReader
        registered_as = "my-reader"

        def make_source(self, tmp_path):
            (tmp_path / "a.txt").write_text("alpha")
            return {"path": str(tmp_path)}  # the experiment-table options

        def make_missing_source(self, tmp_path):
            return {"path": str(tmp_path / "nothing-here")}
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retro_platform.errors import ConfigError
from retro_platform.protocols.corpus_reader import CorpusReader, SourceDocument
from retro_platform.protocols.options import BASE_DIR
from retro_platform.testing._common import OptionsContract


class CorpusReaderContract(OptionsContract):
    """The corpus-reader rules as pytest tests; set :attr:`factory` and override
    :meth:`make_source` (and :meth:`make_missing_source`)."""

    family = "corpus_readers"

    def make_source(self, tmp_path: Path) -> dict[str, Any]:
        """Create a small corpus under ``tmp_path`` if the reader needs one; return the
        options that read it. The default: :attr:`options` as they are."""
        return dict(self.options)

    def make_missing_source(self, tmp_path: Path) -> dict[str, Any] | None:
        """Options naming a source that does not exist (None: the reader has no such case)."""
        return None

    def option_table(self, tmp_path: Path) -> dict[str, Any]:
        return self.make_source(tmp_path)

    @pytest.fixture
    def reader(self, tmp_path: Path) -> CorpusReader:
        """The plugin built as the core builds it: ``factory(options)``."""
        return self.factory(self.make_options(tmp_path))

    @pytest.fixture
    def documents(self, reader: CorpusReader) -> list[SourceDocument]:
        return list(reader.documents())

    def test_check_accepts_a_readable_source(self, reader: CorpusReader) -> None:
        """Rule: ``check()`` returns quietly when the corpus can be read."""
        try:
            reader.check()
        except ConfigError as error:
            pytest.fail(f"rule: check() accepts a readable source; it raised: {error}")

    def test_documents_streams(self, reader: CorpusReader) -> None:
        """Rule: ``documents()`` is an iterator (one document at a time, never the corpus
        in memory)."""
        stream = reader.documents()
        assert isinstance(stream, Iterator), (
            f"rule: documents() returns an iterator (e.g. a generator), not {type(stream).__name__}"
        )

    def test_documents_are_source_documents(self, documents: list[SourceDocument]) -> None:
        """Rule: the source yields ``SourceDocument`` s: ``data`` bytes, ``problem`` None or
        text (and then ``data`` is empty), ``metadata`` None or a dict of strings."""
        assert documents, "rule: a readable source yields documents (make_source made none?)"
        for document in documents:
            assert isinstance(document, SourceDocument), "rule: documents are SourceDocuments"
            assert isinstance(document.data, bytes), (
                f"rule: data is bytes (the core decodes it), in {document.external_id!r}"
            )
            if document.problem is not None:
                assert isinstance(document.problem, str) and document.data == b"", (
                    f"rule: a document with a problem has empty data: {document.external_id!r}"
                )
            metadata = document.metadata
            assert metadata is None or (
                isinstance(metadata, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
            ), f"rule: metadata is None or a dict of strings, in {document.external_id!r}"

    def test_a_readable_source_has_text(self, documents: list[SourceDocument]) -> None:
        """Rule: a readable source yields at least one document with text and no problem."""
        assert any(d.problem is None and d.data.strip() for d in documents), (
            "rule: a readable source yields documents with text"
        )

    def test_external_ids_are_unique_strings(self, documents: list[SourceDocument]) -> None:
        """Rule: every ``external_id`` is a non-empty string, unique within the corpus."""
        ids = [document.external_id for document in documents]
        assert all(isinstance(i, str) and i for i in ids), "rule: external ids are non-empty str"
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert not repeated, f"rule: external ids are unique; repeated: {repeated[:5]}"

    def test_the_order_is_stable(self, reader: CorpusReader, documents) -> None:
        """Rule: reading again yields the same documents in the same order."""
        again = list(reader.documents())
        assert [(d.external_id, d.data) for d in again] == [
            (d.external_id, d.data) for d in documents
        ], "rule: documents() yields the same documents in a stable order"

    def test_describe_and_count_hint(self, reader: CorpusReader, documents) -> None:
        """Rule: ``describe()`` is a non-empty string; ``count_hint()`` is None or the number
        of documents ``documents()`` yields."""
        description = reader.describe()
        assert isinstance(description, str) and description, "rule: describe() is a string"
        hint = reader.count_hint()
        assert hint is None or hint == len(documents), (
            f"rule: count_hint() is None or the number of documents ({len(documents)}), "
            f"got {hint!r}"
        )

    def test_a_missing_source_is_a_config_error(self, tmp_path: Path) -> None:
        """Rule: a source that does not exist is refused with a one-line ``ConfigError``, by
        the options or by ``check()``, before any document is read."""
        table = self.make_missing_source(tmp_path)
        if table is None:
            pytest.skip("make_missing_source() gives no missing source for this reader")
        with pytest.raises((ConfigError, ValueError)) as raised:
            options = self.factory.Options.model_validate(table, context={BASE_DIR: tmp_path})
            self.factory(options).check()
        message = str(raised.value)
        if isinstance(raised.value, ConfigError):
            assert "\n" not in message, f"rule: the error is one line: {message!r}"

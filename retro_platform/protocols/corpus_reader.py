"""The corpus-reader protocol: where documents come from.

A reader streams raw documents; the core (``retro_platform.corpus``) decodes, tokenizes,
chunks and stores them. Readers never decide what is a usable document beyond reading it:
text that is not UTF-8 or is empty is skipped and counted by the core, the same way for every
reader.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from retro_platform.protocols.options import PluginOptions


@dataclass(frozen=True)
class SourceDocument:
    """One document as read.

    Attributes:
        external_id: stable across runs and unique within the corpus: a path relative to the
            corpus root, or the id field of a JSON line. Ingest skips a document whose
            ``external_id`` is stored with the same checksum.
        data: the raw content. The core decodes it as UTF-8 and checksums these bytes.
        problem: set instead of ``data`` (which is then ``b""``) when the reader could not get
            the content, e.g. a JSON line that does not parse; the core counts and reports it,
            grouped by this text.
        metadata: what the reader knows about the document beyond its text (a package's
            version, say), as strings; stored with the document (``documents.meta``).
    """

    external_id: str
    data: bytes
    problem: str | None = None
    metadata: dict[str, str] | None = field(default=None, hash=False)  # a dict has no hash


class CorpusReader(ABC):
    """Base class of corpus readers, registered with ``register_corpus_readers``.

    Built as ``Reader(options)`` with an instance of its ``Options`` model.
    """

    Options: ClassVar[type[PluginOptions]] = PluginOptions

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`retro_platform.errors.ConfigError` if the corpus cannot be read at all
        (e.g. a path that does not exist). Called before any work starts."""

    @abstractmethod
    def documents(self) -> Iterator[SourceDocument]:
        """Every document, in a stable order, one at a time (never the corpus in memory)."""

    def describe(self) -> str:
        """Where the documents come from, for messages (a folder, a file, ...)."""
        return type(self).__name__

    def count_hint(self) -> int | None:
        """How many documents :meth:`documents` will yield, if cheap to know (progress bars)."""
        return None

"""What each swappable component must offer. The core is written against these alone."""

from typing import TYPE_CHECKING, Any

from retro_platform.protocols.corpus_reader import CorpusReader, SourceDocument
from retro_platform.protocols.embedder import Embedder
from retro_platform.protocols.options import (
    BASE_DIR,
    PluginOptions,
    RelativePath,
    options_dict,
    result_options,
    stored_options,
)
from retro_platform.protocols.retriever import MISSING, Retriever, VectorRows
from retro_platform.protocols.tokenizer import Encoding, Tokenizer

if TYPE_CHECKING:
    from retro_platform.protocols.positional_encoding import AttentionRole, PositionalEncoding


def __getattr__(name: str) -> Any:
    # the positional-encoding protocol needs torch: imported when asked for, so that the CLI
    # and the experiment file's validation start without it
    if name in ("AttentionRole", "PositionalEncoding"):
        from retro_platform.protocols import positional_encoding

        return getattr(positional_encoding, name)
    raise AttributeError(f"module 'retro_platform.protocols' has no attribute {name!r}")


__all__ = [
    "BASE_DIR",
    "MISSING",
    "AttentionRole",
    "CorpusReader",
    "Embedder",
    "Encoding",
    "PluginOptions",
    "PositionalEncoding",
    "RelativePath",
    "Retriever",
    "SourceDocument",
    "Tokenizer",
    "VectorRows",
    "options_dict",
    "result_options",
    "stored_options",
]

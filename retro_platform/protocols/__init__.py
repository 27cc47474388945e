"""What each swappable component must offer. The core is written against these alone."""

from retro_platform.protocols.corpus_reader import CorpusReader, SourceDocument
from retro_platform.protocols.embedder import Embedder
from retro_platform.protocols.options import (
    BASE_DIR,
    PluginOptions,
    RelativePath,
    options_dict,
    stored_options,
)
from retro_platform.protocols.positional_encoding import AttentionRole, PositionalEncoding
from retro_platform.protocols.retriever import MISSING, Retriever
from retro_platform.protocols.tokenizer import Encoding, Tokenizer

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
    "options_dict",
    "stored_options",
]

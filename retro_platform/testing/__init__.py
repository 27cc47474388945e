"""The plugin conformance kit: each protocol's contract as pytest tests to subclass.

A plugin's own test module subclasses the contract of its kind and sets a few class
attributes; pytest then runs the whole contract against the plugin::

    from retro_platform.testing import RetrieverContract

    class TestMyRetriever(RetrieverContract):
        factory = MyRetriever
        options = {"metric": "ip"}
        registered_as = "my-retriever"

The bases' names do not start with ``Test``, so pytest collects only the subclasses. Each test's
docstring states its rule, and a failure message names the rule that was broken.
"""

from typing import TYPE_CHECKING, Any

import pytest

# before the contracts are imported: their asserts then explain themselves as a test's do
pytest.register_assert_rewrite(
    "retro_platform.testing._common",
    "retro_platform.testing.corpus_reader",
    "retro_platform.testing.embedder",
    "retro_platform.testing.positional_encoding",
    "retro_platform.testing.retriever",
    "retro_platform.testing.tokenizer",
)

from retro_platform.testing.corpus_reader import CorpusReaderContract  # noqa: E402
from retro_platform.testing.embedder import EmbedderContract  # noqa: E402
from retro_platform.testing.retriever import RetrieverContract  # noqa: E402
from retro_platform.testing.tokenizer import TokenizerContract  # noqa: E402

if TYPE_CHECKING:
    from retro_platform.testing.positional_encoding import PositionalEncodingContract


def __getattr__(name: str) -> Any:
    # the positional-encoding contract needs torch: imported when asked for, so that the
    # other contracts' test runs start without it
    if name == "PositionalEncodingContract":
        from retro_platform.testing.positional_encoding import PositionalEncodingContract

        return PositionalEncodingContract
    raise AttributeError(f"module 'retro_platform.testing' has no attribute {name!r}")


__all__ = [
    "CorpusReaderContract",
    "EmbedderContract",
    "PositionalEncodingContract",
    "RetrieverContract",
    "TokenizerContract",
]

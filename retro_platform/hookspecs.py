"""The plugin hooks of retro-platform: every hook a plugin may implement, in one place.

A plugin is a module (or a distribution that names one under the entry-point group
``retro_platform``) with functions decorated by :data:`hookimpl`. Each ``register_*`` hook is
called once, when the plugin manager first loads, with a ``register`` callback::

    from retro_platform import hookimpl

    @hookimpl
    def register_positional_encodings(register):
        register("sinusoidal", SinusoidalEncoding)

``register(name, factory)`` records which plugin registered ``name``. When two plugins register
the same name, the first loaded keeps it (built-ins load first, then third-party plugins sorted
by distribution name) and the second's registration is ignored, with a one-line warning naming
both plugins and how to disable the second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT_NAME = "retro_platform"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Register = Callable[..., None]


@hookspec
def register_positional_encodings(register: Register) -> None:
    """Register positional-encoding variants for the RETRO model.

    Called once when plugins load. Call ``register(name, factory)`` for each variant, where
    ``factory`` is a subclass of :class:`retro_platform.protocols.PositionalEncoding` (or any
    callable taking the same keyword arguments and returning one). The model looks the name up
    in ``[model] positional_encoding`` / ``RETRO(positional_encoding=...)``.
    """


@hookspec
def register_corpus_readers(register: Register) -> None:
    """Register corpus readers: where ``ingest`` gets documents from.

    Call ``register(name, factory)`` with a subclass of
    :class:`retro_platform.protocols.CorpusReader`. The experiment file picks one with
    ``[corpus] name = "..."``; the table's other keys are validated by its ``Options`` model.
    """


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers: text to token ids, for chunking and for the model's vocabulary.

    Call ``register(name, factory)`` with a subclass of
    :class:`retro_platform.protocols.Tokenizer`; picked with ``[tokenizer] name = "..."``.
    """


@hookspec
def register_embedders(register: Register) -> None:
    """Register embedders: chunk text to the frozen vectors that retrieval searches.

    Call ``register(name, factory)`` with a subclass of
    :class:`retro_platform.protocols.Embedder`; picked with ``[embedder] name = "..."``.
    """


@hookspec
def register_retrievers(register: Register) -> None:
    """Register retrievers: vector indexes over chunk embeddings (Faiss and others).

    Call ``register(name, factory)`` with a subclass of
    :class:`retro_platform.protocols.Retriever`; picked with ``[retriever] name = "..."``.
    """


def hook_names() -> list[str]:
    """The names of every hook defined here (used by the docs test and ``plugins``)."""
    return sorted(name for name, obj in globals().items() if hasattr(obj, "retro_platform_spec"))


__all__: list[Any] = [
    "hook_names",
    "hookimpl",
    "hookspec",
    "register_corpus_readers",
    "register_embedders",
    "register_positional_encodings",
    "register_retrievers",
    "register_tokenizers",
]

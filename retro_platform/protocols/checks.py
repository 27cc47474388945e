"""What the core checks of a plugin's answers before it stores or uses them.

A plugin that breaks its protocol (vectors of the wrong shape, NaN, a search that returns fewer
columns than asked or ids that were never stored) would otherwise be stored silently as wrong
neighbours, or fail far away with a traceback that names neither the plugin nor the rule. Each
check raises a one-line :class:`~retro_platform.errors.ConfigError` that names the plugin and
the rule it broke.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from retro_platform.errors import ConfigError


def checked_vectors(name: str, embedded: Any, texts: int, dimension: int) -> np.ndarray:
    """``embedded``, what embedder ``name`` returned for ``texts`` texts, as float32
    ``(texts, dimension)`` with only finite values."""
    vectors = np.asarray(embedded, dtype=np.float32)
    if vectors.shape != (texts, dimension):
        raise ConfigError(
            f"embedder {name!r} returned {vectors.shape} for "
            f"{texts} texts, expected ({texts}, {dimension})"
        )
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise ConfigError(
            f"embedder {name!r} returned vectors with NaN or infinite values for "
            f"{int((~finite).sum())} of {texts} texts (the first: text {int(np.argmin(finite))} "
            f"of the batch); they cannot be searched: fix the embedder or its options "
            f"(a precision such as fp16 can overflow)"
        )
    return vectors


def checked_search(name: str, found: Any, queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``found``, what retriever ``name``'s ``search`` returned for ``queries`` queries and
    ``k``, as ``(scores, ids)``: float32 and int64, both ``(queries, k)``."""
    try:
        scores, ids = found
    except (TypeError, ValueError):
        raise ConfigError(
            f"retriever {name!r}: search must return (scores, ids), got {type(found).__name__}"
        ) from None
    scores, ids = np.asarray(scores, np.float32), np.asarray(ids)
    if scores.shape != (queries, k) or ids.shape != (queries, k):
        raise ConfigError(
            f"retriever {name!r}: search returned scores {scores.shape} and ids {ids.shape} "
            f"for {queries} queries and k={k}, expected ({queries}, {k}) each (pad a short row "
            f"with id -1 and score -inf)"
        )
    if not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(
            f"retriever {name!r}: search returned ids of dtype {ids.dtype}, not int64"
        )
    return scores, ids.astype(np.int64, copy=False)


def unknown_ids_error(name: str, ids: np.ndarray, known: np.ndarray) -> ConfigError:
    """The error for retriever ``name`` returning ids (``ids``) that are not among ``known``
    (sorted) chunk ids, naming one of them."""
    ids = np.asarray(ids, np.int64).ravel()
    ids = ids[ids >= 0]
    stray = ids[~np.isin(ids, known)]
    example = f" (e.g. {int(stray[0])})" if len(stray) else ""
    return ConfigError(
        f"retriever {name!r}: search returned ids that were never stored in the index"
        f"{example}; it must return the ids it was given in build/add, or -1"
    )


def checked_encodings(
    name: str, tokenizer: Any, texts: list[str], encodings: Any, labels: list[str]
) -> list[Any]:
    """``encodings``, what tokenizer ``name``'s ``encode_batch`` returned for ``texts``
    (documents ``labels``), as a list, after checking what chunking and the model rely on:
    one per text, ids in ``0 .. vocab_size - 1`` and never ``pad_id``, starts in the text and
    non-decreasing. A stored id outside the vocabulary would fail training far away (an index
    error in the embedding), and starts out of order would store chunk texts that are not the
    chunks' tokens."""
    encodings = list(encodings)
    if len(encodings) != len(texts):
        raise ConfigError(
            f"tokenizer {name!r}: encode_batch returned {len(encodings)} encodings for "
            f"{len(texts)} texts"
        )
    vocab_size, pad_id = tokenizer.vocab_size, tokenizer.pad_id
    for text, encoding, label in zip(texts, encodings, labels, strict=True):
        ids, starts = np.asarray(encoding.ids), np.asarray(encoding.starts)
        where = f"tokenizer {name!r} on document {label!r}"
        if ids.ndim != 1 or starts.shape != ids.shape:
            raise ConfigError(
                f"{where}: ids {ids.shape} and starts {starts.shape} must be two (tokens,) arrays"
            )
        if not len(ids):
            continue
        if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= vocab_size:
            bad = ids[(ids < 0) | (ids >= vocab_size)] if ids.dtype.kind in "iu" else ids
            raise ConfigError(
                f"{where}: token id {bad[0].item()!r} is outside its vocabulary "
                f"(vocab_size {vocab_size}: ids 0 .. {vocab_size - 1})"
            )
        if (ids == pad_id).any():
            raise ConfigError(
                f"{where}: produced its padding id {pad_id}, which the model masks out; "
                f"encode must never return pad_id"
            )
        if starts[0] < 0 or starts[-1] > len(text) or (np.diff(starts) < 0).any():
            raise ConfigError(
                f"{where}: token starts must be non-decreasing character offsets in the text "
                f"(0 .. {len(text)}), got {starts[:5].tolist()}..."
            )
    return encodings


def checked_documents(name: str, documents: Iterable[Any]) -> Iterator[Any]:
    """The documents corpus reader ``name`` yields, each checked against the protocol as it
    passes: a ``SourceDocument`` with a non-empty ``str`` id, ``bytes`` data, a ``str`` problem
    (or None) and ``dict[str, str]`` metadata (or None). An id of another type was stored
    converted, so that the next ingest no longer recognised it and failed on the unique key;
    metadata that is not JSON failed as a database error."""
    from retro_platform.protocols.corpus_reader import SourceDocument

    for document in documents:
        if not isinstance(document, SourceDocument):
            raise ConfigError(
                f"corpus reader {name!r}: documents() must yield "
                f"retro_platform.protocols.SourceDocument, got {type(document).__name__}"
            )
        where = f"corpus reader {name!r}"
        if not isinstance(document.external_id, str) or not document.external_id:
            raise ConfigError(
                f"{where}: a document's external_id must be a non-empty str (stable across "
                f"runs), got {document.external_id!r}"
            )
        where += f", document {document.external_id!r}"
        if not isinstance(document.data, bytes | bytearray):
            raise ConfigError(
                f"{where}: data must be the raw bytes, got {type(document.data).__name__} "
                f"(the core decodes it as UTF-8)"
            )
        if document.problem is not None and not isinstance(document.problem, str):
            raise ConfigError(f"{where}: problem must be a str or None")
        metadata = document.metadata
        if metadata is not None and not (
            isinstance(metadata, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
        ):
            raise ConfigError(
                f"{where}: metadata must be a dict of str to str or None, got {metadata!r}"
            )
        yield document

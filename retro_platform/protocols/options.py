"""Plugin options: each plugin declares a pydantic model of its own options.

An experiment file's plugin table is ``name = "..."`` plus that plugin's options, e.g.::

    [retriever]
    name = "faiss-hnsw"
    M = 32

The core looks the plugin up by ``name`` and validates the rest with the plugin's ``Options``
model, which forbids unknown keys, so a typo is an error that names the key and the plugin
instead of a silently ignored setting. Relative paths among the options are relative to the
experiment file: annotate them with :data:`RelativePath`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo

#: The pydantic validation-context key that holds the folder relative paths are resolved from.
BASE_DIR = "base_dir"


class PluginOptions(BaseModel):
    """Base of every plugin's options: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Options that change no result at all, only how fast or where it is made: a batch size,
    #: a device, a worker or thread count. Every fingerprint leaves them out, so changing one
    #: reuses the stored embeddings, index and neighbours.
    runtime_options: ClassVar[frozenset[str]] = frozenset()

    #: A retriever's search-time options (a search breadth such as ``nprobe`` or ``efSearch``):
    #: they change what a search returns but not the index it searches. The index's fingerprint
    #: leaves them out (changing one reuses the stored index); the neighbours' keeps them (the
    #: neighbour sets are searched again).
    search_options: ClassVar[frozenset[str]] = frozenset()


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get(BASE_DIR)
    path = path.expanduser()
    return path if path.is_absolute() or base is None else Path(base) / path


#: A path option: ``~`` is expanded and a relative path is taken from the experiment file's
#: folder (the ``base_dir`` of the validation context; the working directory without one).
RelativePath = Annotated[Path, AfterValidator(_resolve)]


def options_dict(options: BaseModel) -> dict[str, Any]:
    """Every option with its default filled in, JSON-ready: what the store and MLflow record."""
    return options.model_dump(mode="json")


def result_options(options: BaseModel) -> dict[str, Any]:
    """:func:`options_dict` without the runtime options: what decides a result (the
    neighbours a search returns, the vectors an embedder makes)."""
    runtime = getattr(options, "runtime_options", frozenset())  # a plain BaseModel has none
    return {key: value for key, value in options_dict(options).items() if key not in runtime}


def stored_options(options: BaseModel) -> dict[str, Any]:
    """:func:`result_options` without the search-time ones: what decides a stored index (or
    corpus, or embedding set)."""
    search = getattr(options, "search_options", frozenset())
    return {key: value for key, value in result_options(options).items() if key not in search}

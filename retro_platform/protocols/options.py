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

import types
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

#: The pydantic validation-context key that holds the folder relative paths are resolved from.
BASE_DIR = "base_dir"


class NumbersNotBooleans(BaseModel):
    """A model whose number fields refuse ``true`` and ``false``: pydantic reads them as 1 and
    0, so ``steps = true`` would train one step without a word. Other conversions are kept
    (a TOML string for a path, a list for a tuple)."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _boolean_for_number(value, field.annotation):
            raise PydanticCustomError(
                "number_not_boolean", "must be a number, not true or false", {}
            )
        return value


def _boolean_for_number(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is, or is a list holding, a boolean where ``annotation`` wants a
    number and no boolean."""
    kinds = _leaf_types(annotation)
    if isinstance(value, list | tuple):
        kinds = {
            item
            for kind in kinds
            if get_origin(kind) in (list, tuple)
            for arg in get_args(kind)
            if arg is not Ellipsis
            for item in _leaf_types(arg)
        }
        value = next((item for item in value if isinstance(item, bool)), None)
    return isinstance(value, bool) and bool(kinds & {int, float}) and not kinds & {bool, Any}


def _leaf_types(annotation: Any) -> set[Any]:
    """The plain types an annotation admits (unions and ``Annotated`` opened, a ``Literal``'s
    values by their type)."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    if origin is Annotated:
        return _leaf_types(get_args(annotation)[0])
    if origin is Literal:
        return {type(value) for value in get_args(annotation)}
    return {annotation}


class PluginOptions(NumbersNotBooleans):
    """Base of every plugin's options: unknown keys are refused, values are immutable, and a
    number option refuses ``true``/``false``."""

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

"""Load and validate an experiment file.

Every table is a pydantic model that forbids unknown keys, so a typo is reported with its
table, its key and the closest valid key. Plugin tables (``[corpus]``, ``[tokenizer]``,
``[embedder]``, ``[retriever]``) hold ``name`` plus the plugin's own options; those options are
validated by the plugin itself, once (:meth:`Experiment.plugin_table`), by
:meth:`Experiment.check_plugins` before any work. Relative paths are taken
from the experiment file's folder.

The runner's tables (``[model]``, ``[train]``, ``[eval]``, ``[generate]``, ``[mlflow]``,
``[sweep]``) are in :mod:`retro_platform.config.runner_tables`.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_origin

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from retro_platform.config.overrides import apply_overrides
from retro_platform.config.plugin_table import PluginTable, validate_plugin_table
from retro_platform.config.runner_tables import (
    ConfigTable,
    EvalTable,
    GenerateTable,
    MlflowTable,
    ModelTable,
    SweepTable,
    TrainTable,
)
from retro_platform.errors import ConfigError, did_you_mean
from retro_platform.protocols.options import BASE_DIR, RelativePath

#: The plugin tables: table name -> plugin family.
PLUGIN_TABLES: dict[str, str] = {
    "corpus": "corpus_readers",
    "tokenizer": "tokenizers",
    "embedder": "embedders",
    "retriever": "retrievers",
}


class ExperimentTable(ConfigTable):
    """``[experiment]``: what the run is called and its random seed."""

    name: str = Field("retro", min_length=1, description="the MLflow experiment name")
    seed: int = Field(0, description="seed of every random choice")


class StoreTable(ConfigTable):
    """``[store]``: where chunk text and metadata (SQL) and vector files live."""

    path: RelativePath = Field(
        Path("store"),
        validate_default=True,  # so the default, too, is taken from the experiment file's folder
        description="folder of the store's files (indexes, embeddings, the SQLite database)",
    )
    url: str | None = Field(
        None,
        description="SQLAlchemy database URL; default: a SQLite file retro.db in `path`",
    )
    max_document_bytes: int = Field(
        16 * 2**20,
        ge=1,
        description="ingest skips (and reports) a document larger than this: tokenizing one "
        "document takes 20 (bytes) to 160 (bpe) times its size in memory (docs/store.md)",
    )

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.path / 'retro.db'}"


class RetrievalTable(ConfigTable):
    """``[retrieval]``: how documents become chunks and which neighbours each chunk gets."""

    chunk_size: int = Field(64, ge=2, le=4096, description="tokens per chunk (the paper's m)")
    neighbours: int = Field(2, ge=1, le=64, description="neighbours per chunk (the paper's k)")
    exclude_same_document: bool = Field(
        True, description="never retrieve a chunk of the query chunk's own document"
    )
    validation_fraction: float = Field(
        0.05,
        ge=0.0,
        lt=1.0,
        description="share of documents held out for validation (never in the retrieval index)",
    )
    align_neighbours: bool = Field(
        False,
        description="give the encoder each neighbour as the window of its document that lines "
        "up token for token with the query chunk, instead of the retrieved chunk plus its "
        "continuation on the chunk grid (retro_platform/neighbours/aligned.py)",
    )


class Experiment(ConfigTable):
    """A validated experiment file."""

    experiment: ExperimentTable = Field(default_factory=dict, validate_default=True)
    store: StoreTable = Field(default_factory=dict, validate_default=True)
    corpus: dict[str, Any] = Field(default_factory=lambda: {"name": "python-stdlib"})
    tokenizer: dict[str, Any] = Field(default_factory=lambda: {"name": "bytes"})
    embedder: dict[str, Any] = Field(default_factory=lambda: {"name": "sentence-transformers"})
    retriever: dict[str, Any] = Field(default_factory=lambda: {"name": "faiss-flat"})
    retrieval: RetrievalTable = Field(default_factory=dict, validate_default=True)
    model: ModelTable = Field(default_factory=dict, validate_default=True)
    train: TrainTable = Field(default_factory=dict, validate_default=True)
    eval: EvalTable = Field(default_factory=dict, validate_default=True)
    generate: GenerateTable = Field(default_factory=dict, validate_default=True)
    mlflow: MlflowTable = Field(default_factory=dict, validate_default=True)
    sweep: SweepTable = Field(default_factory=dict, validate_default=True)

    #: The file this came from (None when built in code) and its folder.
    source: Path | None = Field(None, exclude=True)
    base_dir: Path = Field(Path("."), exclude=True)
    #: The ``--set`` overrides it was loaded with, as given: fix-it hints repeat them.
    overrides: tuple[str, ...] = Field((), exclude=True)

    _plugin_tables: dict[tuple[str, str, str], PluginTable] = PrivateAttr(default_factory=dict)

    def plugin_table(self, table: str) -> PluginTable:
        """A plugin table (``"corpus"``, ``"embedder"``, ...) validated against its plugin: the
        first call validates it, later ones return the same object. Raises a one-line
        ``ConfigError`` naming the table and key."""
        values = getattr(self, table)
        # keyed by content: a copied or edited experiment never reads another's validation
        key = (table, json.dumps(values, sort_keys=True, default=str), str(self.base_dir))
        found = self._plugin_tables.get(key)
        if found is None:
            found = validate_plugin_table(table, PLUGIN_TABLES[table], values, self.base_dir)
            self._plugin_tables[key] = found
        return found

    def check_plugins(self) -> None:
        """Validate every plugin table against its plugin; raise ``ConfigError`` on the first
        problem."""
        for table in PLUGIN_TABLES:
            self.plugin_table(table)

    def __eq__(self, other: object) -> bool:
        # the validated plugin tables are a cache of the fields, not a part of the experiment
        if not isinstance(other, Experiment):
            return NotImplemented
        return self.__dict__ == other.__dict__

    @property
    def hint_file(self) -> str:
        """The experiment file as a fix-it hint names it (``retro-platform index FILE``): its
        path, or ``EXPERIMENT.toml`` for an experiment built in code, followed by the ``--set``
        overrides it was loaded with (so that the command shown is the one that was run), each
        quoted for a shell as the overrides are (a path with a space is one argument)."""
        sets = "".join(f" --set {shlex.quote(override)}" for override in self.overrides)
        return shlex.quote(str(self.source or "EXPERIMENT.toml")) + sets


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read and validate ``path`` with ``--set`` ``overrides`` (``"train.steps=100"``, see
    :mod:`retro_platform.config.overrides`) applied first; every problem is a one-line
    :class:`ConfigError`.

    This checks the tables; :func:`retro_platform.config.sweep.check_experiment` checks the
    rest (plugins, the rules between tables, every point of a sweep).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"experiment file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"experiment file {path} is a folder, not a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"experiment file {path} is not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"cannot read experiment file {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # tomllib's message ends with "(at line L, column C)": keep it, on one line
        raise ConfigError(f"{path} is not valid TOML: {' '.join(str(error).split())}") from None
    apply_overrides(data, overrides)
    experiment = experiment_from_dict(data, base_dir=path.resolve().parent, source=path)
    return experiment.model_copy(update={"overrides": tuple(overrides)})


def experiment_from_dict(
    data: dict[str, Any], *, base_dir: Path, source: Path | None = None
) -> Experiment:
    """Validate an already-parsed experiment (what :func:`load_experiment` does after TOML)."""
    where = str(source) if source else "experiment"
    try:
        return validate_tables(data, base_dir=base_dir, source=source)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def validate_tables(
    data: dict[str, Any], *, base_dir: Path, source: Path | None = None
) -> Experiment:
    """:func:`experiment_from_dict` with messages that do not name the file."""
    try:
        experiment = Experiment.model_validate(data, context={BASE_DIR: base_dir})
    except ValidationError as error:
        raise ConfigError(_describe(error.errors()[0])) from None
    for table in PLUGIN_TABLES:
        name = getattr(experiment, table).get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f'[{table}] needs name = "..." (a plugin name)')
    check_sweep_keys(experiment.sweep.grid)
    return experiment.model_copy(update={"source": source, "base_dir": base_dir})


#: Fields of :class:`Experiment` that are not tables of the file.
_NOT_TABLES = ("source", "base_dir", "overrides")

#: The tables of an experiment file, in order.
TABLES: tuple[str, ...] = tuple(name for name in Experiment.model_fields if name not in _NOT_TABLES)


def table_model(table: str) -> type[BaseModel] | None:
    """The pydantic model of a typed table (``"train"`` -> ``TrainTable``); None for a plugin
    table or an unknown name."""
    field = Experiment.model_fields.get(table)
    annotation = field.annotation if field is not None else None
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _describe(problem: dict[str, Any]) -> str:
    """One validation problem as ``[table] key: what is wrong (got value)``, with a
    suggestion for a misspelt key or choice."""
    loc = list(problem["loc"])
    kind = problem["type"]
    if kind == "extra_forbidden":
        *parents, key = (str(part) for part in loc)
        model: Any = Experiment
        for part in parents:
            field = getattr(model, "model_fields", {}).get(part)
            model = field.annotation if field is not None else None
        known = [name for name in getattr(model, "model_fields", {}) if name not in _NOT_TABLES]
        if not parents:
            return f"unknown table {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}"
        where = f"[{'.'.join(parents)}]"
        hint = f"{did_you_mean(key, known)}; known: {', '.join(known)}" if known else ""
        return f"{where} unknown key {key!r}{hint}"
    where = f"[{loc[0]}]" if loc else "top level"
    key = _key_path(loc[1:])
    if kind == "value_error":  # our own validators' text, without pydantic's "Value error, "
        message = str(problem.get("ctx", {}).get("error", problem["msg"]))
    elif kind == "path_type":
        message = "expected a path (a string)"
    else:
        message = problem["msg"]
    if not key:
        if kind in ("model_type", "dict_type"):
            return f"{where} must be a table, got {problem.get('input')!r}"
        return f"{where}: {message}"  # a rule over the whole table: its value says nothing
    got = problem.get("input")
    hint = ""
    if kind == "literal_error" and isinstance(got, str):
        hint = did_you_mean(got, re.findall(r"'([^']*)'", str(problem["ctx"]["expected"])))
    return f"{where} {key}: {message} (got {got!r}){hint}"


def _key_path(parts: list[Any]) -> str:
    # ("betas", 0) -> "betas[0]"; ("options", "slope") -> "options.slope"
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_sweep_keys(grid: dict[str, Any]) -> None:
    """Every swept key must name a key of a table: a typed table's own key (or a key inside
    one of its dictionaries, such as ``model.positional_encoding_options.slope``), or any key
    of a plugin table, whose plugin then validates it at every point."""
    for key in grid:
        table, _, rest = key.partition(".")
        if table not in TABLES or table == "sweep":
            tables = [name for name in TABLES if name != "sweep"]
            raise ConfigError(
                f"[sweep] {key!r}: unknown table {table!r}{did_you_mean(table, tables)}"
            )
        model = table_model(table)
        if model is None:
            if table not in PLUGIN_TABLES:  # pragma: no cover - every table is one or the other
                raise ConfigError(f"[sweep] {key!r}: [{table}] cannot be swept")
            continue
        field, _, inner = rest.partition(".")
        if field not in model.model_fields:
            known = list(model.model_fields)
            raise ConfigError(
                f"[sweep] {key!r}: [{table}] has no key {field!r}{did_you_mean(field, known)}"
            )
        if inner and get_origin(model.model_fields[field].annotation) is not dict:
            raise ConfigError(
                f"[sweep] {key!r}: [{table}] {field} is not a table; sweep {table}.{field}"
            )

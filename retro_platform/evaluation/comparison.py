"""Runs side by side by neighbour overlap: the paper's Figure 6 for an ablation.

An ablation trains one model with retrieved neighbours, without any (the baseline) and with
shuffled ones (a control), and evaluates every run on the same validation chunks. Only a run
with retrieved neighbours knows how much a chunk overlaps them, so every run's chunks are
bucketed by a *reference* overlap: that of the same chunk (the same chunk-table row) with the
neighbours retrieved for it, taken from a run with retrieved neighbours (the overlap and the
buckets are those of :mod:`retro_platform.evaluation.leakage`). A chunk whose row the reference
did not evaluate has no overlap (NaN) and falls in no bucket.

A bucket's bits per byte is its chunks' summed nats / ln 2 / their summed UTF-8 bytes, as in the
leakage table; the last row, "all chunks", is a run's ``val/bpb``. Each run is one column; a
run evaluated with retrieval off too (RETRO[off]: the same weights, no neighbours) adds a
column for that. The shares of chunks and of bytes are those of the first run's chunks (the runs
of an ablation evaluate the same chunks against one neighbour file, so they agree).

Every run keeps its per-chunk figures in its run folder as ``eval/chunks.npz``
(:class:`ChunkFigures`), which is what a comparison is built from.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retro_platform.atomic import atomic_destination
from retro_platform.evaluation.chunk_figures import ChunkFigures
from retro_platform.evaluation.leakage import bucket_of

ALL_CHUNKS = "all chunks"
#: The label a run's retrieval-off column gets after the run's own label.
OFF_SUFFIX = " [retrieval off]"


def reference_overlap(figures: ChunkFigures, reference: ChunkFigures) -> np.ndarray:
    """``(chunks,)`` the reference's overlap of each of ``figures``' chunk rows (NaN for a row
    the reference did not evaluate)."""
    if reference.chunk_overlap is None:
        raise ValueError("the reference run has no overlaps: it evaluated without neighbours")
    where = _positions(figures.chunk_rows, reference.chunk_rows)
    return np.where(where >= 0, reference.chunk_overlap[where.clip(0)], math.nan)


def _positions(rows: np.ndarray, reference_rows: np.ndarray) -> np.ndarray:
    """Index in ``reference_rows`` of each of ``rows`` (its first occurrence), -1 if absent."""
    rows, reference_rows = np.asarray(rows), np.asarray(reference_rows)
    if len(reference_rows) == 0:
        return np.full(len(rows), -1, dtype=np.int64)
    order = np.argsort(reference_rows, kind="stable")
    ordered = reference_rows[order]
    at = np.searchsorted(ordered, rows).clip(0, len(ordered) - 1)
    return np.where(ordered[at] == rows, order[at], -1)


# ---------------------------------------------------------------- the comparison table


@dataclass(frozen=True)
class ComparedRun:
    """One run of a comparison.

    Attributes:
        label: its column's name, e.g. ``"train.neighbours=retrieved"``.
        figures: its per-chunk figures.
        overlap: ``(chunks,)`` the reference overlap of each of its chunks
            (:func:`reference_overlap`).
        retrieval_off: also a column for its weights with retrieval off (needs
            ``figures.chunk_loss_off``).
    """

    label: str
    figures: ChunkFigures
    overlap: np.ndarray
    retrieval_off: bool = False


@dataclass(frozen=True)
class ComparisonRow:
    """One overlap bucket (or all chunks) of a comparison.

    Attributes:
        bucket: its label, ``"[0, 0.125]"``, ``"(0.125, 0.25]"``, ... or ``"all chunks"``.
        chunks: the first run's chunks in it.
        share, byte_share: those chunks, and their bytes, over all the first run's.
        bpb: bits per byte of each column's chunks in it (NaN: none there).
    """

    bucket: str
    chunks: int
    share: float
    byte_share: float
    bpb: tuple[float, ...]


@dataclass(frozen=True)
class Comparison:
    """Bits per byte of several runs by overlap bucket: a row per bucket, then all chunks."""

    columns: tuple[str, ...]
    rows: tuple[ComparisonRow, ...]

    def bpb(self, column: str, bucket: str = ALL_CHUNKS) -> float:
        row = next(row for row in self.rows if row.bucket == bucket)
        return row.bpb[self.columns.index(column)]


def compare(runs: Sequence[ComparedRun], edges: Sequence[float]) -> Comparison:
    """The comparison of ``runs`` in the overlap buckets ``edges`` (``[eval]
    leakage_buckets``); see the module docstring."""
    if not runs:
        raise ValueError("a comparison needs at least one run")
    labels = [
        f"{'[' if i == 0 else '('}{low:g}, {high:g}]"
        for i, (low, high) in enumerate(zip(edges[:-1], edges[1:], strict=True))
    ]
    columns: list[str] = []
    # each column's nats and bytes per chunk, and its chunks in each row (buckets, then all)
    figures: list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = []
    for run in runs:
        bucket = bucket_of(run.overlap, edges)
        masks = [bucket == i for i in range(len(labels))] + [np.ones(len(bucket), bool)]
        columns.append(run.label)
        figures.append((run.figures.chunk_loss, run.figures.chunk_bytes, masks))
        if run.retrieval_off:
            if run.figures.chunk_loss_off is None:
                raise ValueError(f"{run.label} was not evaluated with retrieval off")
            columns.append(run.label + OFF_SUFFIX)
            figures.append((run.figures.chunk_loss_off, run.figures.chunk_bytes, masks))

    _, first_bytes, first_masks = figures[0]
    total_chunks, total_bytes = len(first_bytes), int(first_bytes.sum())
    rows = []
    for r, label in enumerate([*labels, ALL_CHUNKS]):
        inside = first_masks[r]
        rows.append(
            ComparisonRow(
                bucket=label,
                chunks=int(inside.sum()),
                share=_ratio(int(inside.sum()), total_chunks),
                byte_share=_ratio(int(first_bytes[inside].sum()), total_bytes),
                bpb=tuple(_bpb(nats, sizes, masks[r]) for nats, sizes, masks in figures),
            )
        )
    return Comparison(tuple(columns), tuple(rows))


def _bpb(nats: np.ndarray, sizes: np.ndarray, where: np.ndarray) -> float:
    total = int(sizes[where].sum())
    return float(nats[where].sum()) / math.log(2.0) / total if total > 0 else math.nan


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else math.nan


# ---------------------------------------------------------------- where the gain comes from


@dataclass(frozen=True)
class GainSplit:
    """Where a run's gain over its baseline comes from, by the retrieved run's overlap.

    The gain is counted in bits summed over the chunks both runs evaluated (matched by chunk
    row): ``Σ (baseline nats − retrieved nats) / ln 2``.

    Attributes:
        gain_bits: the whole gain (positive when retrieval helps).
        high, high_share: the share of ``gain_bits`` from chunks overlapping their neighbours
            by more than ``high`` (copying, mostly); NaN when the gain is 0.
        low, low_gain_bpb: on chunks overlapping by at most ``low``, the baseline's bits per
            byte minus the retrieved run's (retrieval helping beyond copying).
        low_gain_relative: ``low_gain_bpb`` over the baseline's bits per byte there.
    """

    gain_bits: float
    high: float
    high_share: float
    low: float
    low_gain_bpb: float
    low_gain_relative: float


def gain_split(
    retrieved: ChunkFigures, baseline: ChunkFigures, *, high: float = 0.5, low: float = 0.25
) -> GainSplit:
    """The :class:`GainSplit` of ``retrieved`` (which has overlaps) over ``baseline``."""
    if retrieved.chunk_overlap is None:
        raise ValueError("the retrieved run has no overlaps: it evaluated without neighbours")
    where = _positions(retrieved.chunk_rows, baseline.chunk_rows)
    both = where >= 0
    ours = retrieved.chunk_loss[both]
    theirs = baseline.chunk_loss[where[both]]
    sizes, overlap = retrieved.chunk_bytes[both], retrieved.chunk_overlap[both]
    gain = (theirs - ours) / math.log(2.0)  # bits per chunk
    total = float(gain.sum())
    at_most_low = np.isfinite(overlap) & (overlap <= low)
    low_baseline = _bpb(theirs, sizes, at_most_low)
    low_gain = low_baseline - _bpb(ours, sizes, at_most_low)
    return GainSplit(
        gain_bits=total,
        high=high,
        high_share=_ratio(float(gain[overlap > high].sum()), total),
        low=low,
        low_gain_bpb=low_gain,
        low_gain_relative=_ratio(low_gain, low_baseline),
    )


# ---------------------------------------------------------------- CSV, markdown, PNG


def write_comparison_csv(comparison: Comparison, path: str | Path) -> Path:
    """A header row (``bucket, chunks, share, byte_share`` and each column's label), then one
    row per bucket and the all-chunks row; a value that is not a number is left empty."""
    path = Path(path)
    with (
        atomic_destination(path) as temporary,
        temporary.open("w", newline="", encoding="utf-8") as file,
    ):
        writer = csv.writer(file)
        writer.writerow(["bucket", "chunks", "share", "byte_share", *comparison.columns])
        for row in comparison.rows:
            numbers = (row.share, row.byte_share, *row.bpb)
            writer.writerow([row.bucket, row.chunks, *(_cell(value, ".6g") for value in numbers)])
    return path


def comparison_markdown(
    comparison: Comparison, splits: Mapping[str, GainSplit] | None = None
) -> str:
    """The comparison as a markdown table (padded, so that it reads in a terminal too), then
    one line per gain split (``splits``: a title, e.g. ``"A over B"``, to its split)."""
    header = ["overlap", "chunks", "share of chunks", "share of bytes"]
    header += [f"bpb: {column}" for column in comparison.columns]
    cells = [
        [
            row.bucket,
            str(row.chunks),
            _percent(row.share),
            _percent(row.byte_share),
            *(_cell(value, ".4f") for value in row.bpb),
        ]
        for row in comparison.rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

    def line(values: list[str]) -> str:
        # the overlap left-aligned, the numbers right-aligned
        padded = [value.rjust(width) for value, width in zip(values, widths, strict=True)]
        padded[0] = values[0].ljust(widths[0])
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "".join(f"|{'-' * (w + 1)}:" for w in widths[1:]) + "|"
    lines = [
        "Validation bits per byte (lower is better) by how much a chunk overlaps its retrieved "
        "neighbours:",
        "",
        line(header),
        rule,
        *(line(values) for values in cells),
    ]
    for title, split in (splits or {}).items():
        lines += ["", f"{title}: {describe_split(split)}"]
    return "\n".join(lines) + "\n"


def describe_split(split: GainSplit) -> str:
    """One sentence: the gain, the share of it from high overlap, the gain at low overlap."""
    return (
        f"{split.gain_bits:.0f} bits saved in all, {_percent(split.high_share)} of them on "
        f"chunks overlapping their neighbours by more than {split.high:g}; on chunks "
        f"overlapping by at most {split.low:g}, {_cell(split.low_gain_bpb, '.4f')} bpb lower "
        f"({_percent(split.low_gain_relative)})"
    )


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """A PNG of grouped bars: bits per byte per overlap bucket (and all chunks, set apart),
    one bar per column, each bucket labelled with its share of the chunks."""
    # lazy: importing matplotlib takes about 0.5 s, and only a plot needs it
    from matplotlib.figure import Figure  # the object API: no global backend, no pyplot state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    groups, bars = len(comparison.rows), len(comparison.columns)
    x = np.arange(groups, dtype=float)
    x[-1] += 0.5  # all chunks, apart from the buckets
    width = 0.8 / bars
    figure = Figure(figsize=(max(9.0, 0.3 * groups * bars + 5), 4.6), dpi=120)
    axes = figure.add_subplot()
    colours = ["#3b6ea8", "#8fb3de", "#c9793a", "#6a9f58", "#9a6fb0", "#b5533c", "#7f7f7f"]
    for j, column in enumerate(comparison.columns):
        heights = [row.bpb[j] for row in comparison.rows]
        offset = (j - (bars - 1) / 2) * width
        axes.bar(x + offset, heights, width, label=column, color=colours[j % len(colours)])
    finite = [value for row in comparison.rows for value in row.bpb if math.isfinite(value)]
    axes.set_ylim(0, max(finite, default=1.0) * 1.2)
    axes.axvline(x[-1] - 0.75, color="#999999", linewidth=0.8, linestyle=":")
    # each bucket's share of the chunks goes under its label, where no bar can cover it
    labels = [
        f"{row.bucket}\n{_percent(row.share)} of chunks ({row.chunks})" for row in comparison.rows
    ]
    axes.set_xticks(x, labels, fontsize=8)
    axes.set_xlabel(
        "overlap with the retrieved neighbours: longest common token run / chunk length"
    )
    axes.set_ylabel("bits per byte")
    axes.set_title("Validation bits per byte by overlap with retrieved neighbours", fontsize=10)
    # beside the axes, where long labels cover no bar
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    with atomic_destination(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def plot_runs(
    names: Sequence[str],
    bpb: Sequence[float | None],
    bpb_off: Sequence[float | None],
    path: str | Path,
) -> Path:
    """A PNG of each run's validation bits per byte, a bar per run, and beside it, where the
    run measured it, the same weights' without retrieval."""
    # lazy: importing matplotlib takes about 0.5 s, and only a plot needs it
    from matplotlib.figure import Figure  # the object API: no global backend, no pyplot state

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(len(names), dtype=float)
    figure = Figure(figsize=(max(6.0, 1.1 * len(names) + 3), 4.2), dpi=120)
    axes = figure.add_subplot()
    on = [math.nan if value is None else value for value in bpb]
    off = [math.nan if value is None else value for value in bpb_off]
    axes.bar(x - 0.2, on, 0.4, label="validation bpb", color="#3b6ea8")
    axes.bar(x + 0.2, off, 0.4, label="the same weights without retrieval", color="#8fb3de")
    for i, value in enumerate(on):
        if math.isfinite(value):
            axes.annotate(f"{value:.4f}", (x[i] - 0.2, value), ha="center", va="bottom", fontsize=7)
    finite = [value for value in on + off if math.isfinite(value)]
    axes.set_ylim(0, max(finite, default=1.0) * 1.2)
    axes.set_xticks(x, list(names), fontsize=8, rotation=20 if len(names) > 4 else 0)
    axes.set_ylabel("bits per byte (lower is better)")
    axes.set_title("Validation bits per byte of the sweep's points", fontsize=10)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    figure.tight_layout()
    with atomic_destination(path) as temporary:
        figure.savefig(temporary, format="png")
    return path


def _cell(value: float, spec: str) -> str:
    return "" if math.isnan(value) else format(value, spec)


def _percent(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.1%}"

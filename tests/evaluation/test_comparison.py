"""Runs compared by neighbour overlap: hand-made per-chunk figures, every number worked out
by hand, and the files written from them."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from retro_platform.evaluation.comparison import (
    ALL_CHUNKS,
    OFF_SUFFIX,
    ChunkFigures,
    ComparedRun,
    compare,
    comparison_markdown,
    gain_split,
    plot_comparison,
    reference_overlap,
    write_comparison_csv,
)

LN2 = math.log(2.0)
EDGES = (0.0, 0.25, 0.5, 1.0)


def figures(rows, bits, sizes, *, bits_off=None, overlap=None) -> ChunkFigures:
    """Per-chunk figures with losses given in bits (stored as nats, as the evaluation does)."""
    return ChunkFigures(
        chunk_rows=np.array(rows, dtype=np.int64),
        chunk_loss=np.array(bits, dtype=np.float64) * LN2,
        chunk_loss_off=None if bits_off is None else np.array(bits_off, dtype=np.float64) * LN2,
        chunk_tokens=np.full(len(rows), 10, dtype=np.int64),
        chunk_bytes=np.array(sizes, dtype=np.int64),
        chunk_overlap=None if overlap is None else np.array(overlap, dtype=np.float64),
    )


# Four validation chunks, rows 10-13, of 10, 10, 20 and 40 bytes. The retrieved run's overlaps
# put rows 10 and 11 in [0, 0.25] and rows 12 and 13 in (0.5, 1]; (0.25, 0.5] is empty.
RETRIEVED = figures(
    [10, 11, 12, 13],
    [1, 2, 3, 4],
    [10, 10, 20, 40],
    bits_off=[2, 2, 5, 8],
    overlap=[0, 0.2, 0.6, 1],
)
# the baseline evaluated the same chunks in another order: rows 13, 12, 11, 10
BASELINE = figures([13, 12, 11, 10], [6, 4, 3, 1], [40, 20, 10, 10])
SHUFFLED = figures([10, 11, 12, 13], [2, 3, 4, 6], [10, 10, 20, 40], overlap=[0, 0, 0, 0])


def ablation() -> list[ComparedRun]:
    return [
        ComparedRun("retrieved", RETRIEVED, RETRIEVED.chunk_overlap, retrieval_off=True),
        ComparedRun("none", BASELINE, reference_overlap(BASELINE, RETRIEVED)),
        ComparedRun("shuffled", SHUFFLED, reference_overlap(SHUFFLED, RETRIEVED)),
    ]


def test_reference_overlap_follows_the_chunk_rows() -> None:
    assert reference_overlap(BASELINE, RETRIEVED).tolist() == [1.0, 0.6, 0.2, 0.0]
    # the shuffled run's own overlaps are not used: the retrieved run's are
    assert reference_overlap(SHUFFLED, RETRIEVED).tolist() == [0.0, 0.2, 0.6, 1.0]
    other = figures([12, 99], [1, 1], [1, 1])
    found = reference_overlap(other, RETRIEVED)
    assert found[0] == 0.6 and math.isnan(found[1])  # row 99 was not evaluated there
    with pytest.raises(ValueError, match="without neighbours"):
        reference_overlap(RETRIEVED, BASELINE)


def test_bits_per_byte_per_bucket_by_hand() -> None:
    comparison = compare(ablation(), EDGES)
    assert comparison.columns == ("retrieved", "retrieved" + OFF_SUFFIX, "none", "shuffled")
    buckets = [row.bucket for row in comparison.rows]
    assert buckets == ["[0, 0.25]", "(0.25, 0.5]", "(0.5, 1]", ALL_CHUNKS]
    low, middle, high, everything = comparison.rows
    # [0, 0.25]: rows 10 and 11, 20 bytes
    assert (low.chunks, low.share, low.byte_share) == (2, 0.5, 0.25)
    assert low.bpb == pytest.approx((3 / 20, 4 / 20, 4 / 20, 5 / 20), rel=1e-12)
    # (0.25, 0.5]: no chunk, so no bits per byte
    assert (middle.chunks, middle.share, middle.byte_share) == (0, 0.0, 0.0)
    assert all(math.isnan(value) for value in middle.bpb)
    # (0.5, 1]: rows 12 and 13, 60 bytes
    assert (high.chunks, high.share, high.byte_share) == (2, 0.5, 0.75)
    assert high.bpb == pytest.approx((7 / 60, 13 / 60, 10 / 60, 10 / 60), rel=1e-12)
    # all chunks: each run's val/bpb
    assert (everything.chunks, everything.share, everything.byte_share) == (4, 1.0, 1.0)
    assert everything.bpb == pytest.approx((10 / 80, 17 / 80, 14 / 80, 15 / 80), rel=1e-12)
    assert comparison.bpb("none", "(0.5, 1]") == pytest.approx(10 / 60, rel=1e-12)


def test_a_chunk_without_a_reference_overlap_counts_only_in_all_chunks() -> None:
    extra = figures([10, 11, 12, 13, 14], [1, 2, 3, 4, 8], [10, 10, 20, 40, 20])
    comparison = compare([ComparedRun("none", extra, reference_overlap(extra, RETRIEVED))], EDGES)
    assert [row.chunks for row in comparison.rows] == [2, 0, 2, 5]
    assert comparison.rows[0].share == 2 / 5 and comparison.rows[0].byte_share == 20 / 100
    assert comparison.bpb("none") == pytest.approx(18 / 100, rel=1e-12)


def test_retrieval_off_needs_the_figures() -> None:
    with pytest.raises(ValueError, match="retrieval off"):
        compare([ComparedRun("none", BASELINE, np.zeros(4), retrieval_off=True)], EDGES)


def test_gain_split_by_hand() -> None:
    split = gain_split(RETRIEVED, BASELINE)
    # bits saved per row: 10: 1 - 1, 11: 3 - 2, 12: 4 - 3, 13: 6 - 4
    assert split.gain_bits == pytest.approx(4.0, rel=1e-12)
    # rows 12 and 13 overlap by more than 0.5: 3 of the 4 bits
    assert (split.high, split.high_share) == (0.5, pytest.approx(0.75, rel=1e-12))
    # rows 10 and 11 overlap by at most 0.25: baseline 4/20 bpb, retrieved 3/20
    assert split.low == 0.25
    assert split.low_gain_bpb == pytest.approx(1 / 20, rel=1e-12)
    assert split.low_gain_relative == pytest.approx(0.25, rel=1e-12)
    nothing = gain_split(RETRIEVED, figures([10, 11, 12, 13], [1, 2, 3, 4], [10, 10, 20, 40]))
    assert nothing.gain_bits == 0 and math.isnan(nothing.high_share)
    assert nothing.low_gain_bpb == 0


def test_figures_round_trip_through_npz(tmp_path: Path) -> None:
    path = BASELINE.save(tmp_path / "eval" / "chunks.npz")
    with np.load(path) as stored:
        assert sorted(stored.files) == [
            "chunk_bytes",
            "chunk_loss",
            "chunk_rows",
            "chunk_tokens",
        ]  # the arrays the baseline does not have are left out
    loaded = ChunkFigures.load(path)
    assert loaded.chunk_loss_off is None and loaded.chunk_overlap is None
    assert loaded.chunk_rows.tolist() == [13, 12, 11, 10]
    assert np.array_equal(loaded.chunk_loss, BASELINE.chunk_loss)
    again = ChunkFigures.load(RETRIEVED.save(tmp_path / "retrieved.npz"))
    assert again.chunk_overlap.tolist() == [0, 0.2, 0.6, 1]
    assert np.array_equal(again.chunk_loss_off, RETRIEVED.chunk_loss_off)


def test_csv_markdown_and_png(tmp_path: Path) -> None:
    comparison = compare(ablation(), EDGES)
    path = write_comparison_csv(comparison, tmp_path / "comparison.csv")
    with path.open(newline="") as file:
        header, *rows = list(csv.reader(file))
    assert header == ["bucket", "chunks", "share", "byte_share", *comparison.columns]
    assert rows[0] == ["[0, 0.25]", "2", "0.5", "0.25", "0.15", "0.2", "0.2", "0.25"]
    assert rows[1] == ["(0.25, 0.5]", "0", "0", "0", "", "", "", ""]
    assert rows[3] == ["all chunks", "4", "1", "1", "0.125", "0.2125", "0.175", "0.1875"]

    text = comparison_markdown(comparison, {"retrieved over none": gain_split(RETRIEVED, BASELINE)})
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(comparison.rows)  # header, rule, rows
    assert len({len(line) for line in table}) == 1  # padded: the columns line up
    assert [cell.strip() for cell in table[2].strip("|").split("|")] == [
        "[0, 0.25]", "2", "50.0%", "25.0%", "0.1500", "0.2000", "0.2000", "0.2500",
    ]  # fmt: skip
    assert "bpb: retrieved [retrieval off]" in table[0]
    assert lines[-1] == (
        "retrieved over none: 4 bits saved in all, 75.0% of them on chunks overlapping their "
        "neighbours by more than 0.5; on chunks overlapping by at most 0.25, 0.0500 bpb lower "
        "(25.0%)"
    )

    from matplotlib.image import imread

    picture = plot_comparison(comparison, tmp_path / "plots" / "comparison.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(picture)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 0.05

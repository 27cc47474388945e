"""The leakage analysis: overlap of a chunk with its neighbours, buckets, the CSV and plot."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retro_platform.config.runner_tables import EvalTable
from retro_platform.errors import ConfigError
from retro_platform.evaluation import (
    EvalResult,
    evaluate,
    leakage_table,
    overlap_ratios,
    plot_leakage,
    write_leakage_csv,
)
from retro_platform.evaluation.leakage import bucket_of
from retro_platform.evaluation.overlap import longest_common_runs
from tests.evaluation.helpers import IndexedStore, document_batches

PAD = 0


def one(chunk, *neighbours) -> float:
    return float(overlap_ratios(np.array([chunk]), np.array([neighbours]), PAD)[0])


def test_overlap_of_hand_made_chunks() -> None:
    chunk = list(range(1, 17))  # 16 distinct tokens
    other = list(range(100, 132))  # 32 tokens, none in the chunk
    assert one(chunk, chunk + other) == 1.0  # the neighbour is the chunk itself
    assert one(chunk, other[:7] + chunk + other[:9]) == 1.0  # a copy further in
    assert one(chunk, other, other) == 0.0  # no common token
    five = other[:10] + chunk[3:8] + other[:17]  # a run of 5 in a 16-token chunk
    assert one(chunk, five, other) == 5 / 16
    assert one(chunk, other, five) == 5 / 16  # in either neighbour
    # scattered single matches and a run of 3 elsewhere do not add up
    scattered = [1, 100, 3, 101, 5, 102, 9, 10, 11] + other[:23]
    assert one(chunk, scattered, five) == 5 / 16
    # a run never spans two neighbours
    assert one(chunk, other[:29] + chunk[:3], chunk[3:6] + other[:29]) == 3 / 16


def test_padding_never_matches_and_the_length_is_the_real_tokens() -> None:
    short = [7, 8, 9] + [PAD] * 13  # a document's last chunk: 3 real tokens
    neighbour = [PAD] * 20 + [7, 8] + [PAD] * 10
    assert one(short, neighbour, [PAD] * 32) == 2 / 3
    assert math.isnan(one([PAD] * 16, [PAD] * 32, [PAD] * 32))


def longest_common_substring(a: list[int], b: list[int]) -> int:
    """The textbook dynamic programme, one pair at a time."""
    best = 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            if x == y and x != PAD:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda c: st.tuples(
            st.lists(st.lists(st.integers(0, 3), min_size=8, max_size=8), min_size=c, max_size=c),
            st.lists(
                st.lists(
                    st.lists(st.integers(0, 3), min_size=16, max_size=16), min_size=2, max_size=2
                ),
                min_size=c,
                max_size=c,
            ),
        )
    )
)
def test_runs_equal_the_textbook_dynamic_programme(data) -> None:
    chunks, neighbours = data
    runs = longest_common_runs(np.array(chunks), np.array(neighbours), PAD)
    expected = [
        max(longest_common_substring(chunk, n) for n in ns)
        for chunk, ns in zip(chunks, neighbours, strict=True)
    ]
    assert runs.tolist() == expected


def test_bucket_convention() -> None:
    edges = EvalTable().leakage_buckets  # (0, 0.125, 0.25, 0.5, 0.75, 1)
    overlaps = np.array([0.0, 0.1, 0.125, 0.2, 0.5, 0.74, 1.0, math.nan])
    assert bucket_of(overlaps, edges).tolist() == [0, 0, 0, 1, 2, 3, 4, -1]
    assert bucket_of(np.array([0.05, 0.3, 0.6]), (0.1, 0.5)).tolist() == [-1, 0, -1]


def synthetic_result(loss_off: bool = True) -> EvalResult:
    loss = np.array([1.0, 2.0, 3.0, 4.0]) * math.log(2)  # bits, as nats
    return EvalResult(
        loss=0.0,
        bpb=0.0,
        loss_off=None,
        bpb_off=None,
        tokens=40,
        bytes=40,
        retrieval=True,
        chunk_rows=np.arange(4),
        chunk_loss=loss,
        chunk_loss_off=loss * 2 if loss_off else None,
        chunk_tokens=np.array([10, 10, 10, 10]),
        chunk_bytes=np.array([10, 10, 10, 10]),
        chunk_overlap=np.array([0.0, 0.1, 0.6, 1.0]),
    )


def test_table_rows_by_hand() -> None:
    rows = leakage_table(synthetic_result(), (0.0, 0.5, 1.0))
    assert [row.bucket for row in rows] == ["[0, 0.5]", "(0.5, 1]"]
    first, second = rows
    assert (first.chunks, first.share, first.bytes, first.tokens) == (2, 0.5, 20, 20)
    assert first.bpb == pytest.approx(3 / 20) and first.bpb_off == pytest.approx(6 / 20)
    assert first.gain == pytest.approx(3 / 20)
    assert second.bpb == pytest.approx(7 / 20) and second.cumulative_bpb == pytest.approx(10 / 40)
    assert first.cumulative_bpb == pytest.approx(first.bpb)
    no_off = leakage_table(synthetic_result(loss_off=False), (0.0, 0.5, 1.0))
    assert math.isnan(no_off[0].bpb_off) and math.isnan(no_off[0].gain)


def test_table_needs_neighbours() -> None:
    result = synthetic_result()
    without = EvalResult(**{**result.__dict__, "chunk_overlap": None})
    with pytest.raises(ConfigError, match="without retrieval"):
        leakage_table(without, (0.0, 1.0))


def test_real_validation_set_table_csv_and_plot(indexed: IndexedStore, trained, tmp_path) -> None:
    batches = document_batches(indexed, indexed.held_out, batch_size=8)
    result = evaluate(trained, batches, device="cpu")
    edges = EvalTable().leakage_buckets
    rows = leakage_table(result, edges)
    assert len(rows) == len(edges) - 1
    assert sum(row.chunks for row in rows) == len(result.chunk_rows)
    assert sum(row.share for row in rows) == pytest.approx(1.0)
    assert sum(row.bytes for row in rows) == result.bytes
    assert rows[-1].cumulative_bpb == pytest.approx(result.bpb)
    assert rows[-1].cumulative_bpb_off == pytest.approx(result.bpb_off)
    assert (result.chunk_overlap >= 0).all() and (result.chunk_overlap <= 1).all()

    table = write_leakage_csv(rows, tmp_path / "leakage.csv")
    with table.open(newline="") as file:
        read = list(csv.DictReader(file))
    assert [r["bucket"] for r in read] == [row.bucket for row in rows]
    for r, row in zip(read, rows, strict=True):
        assert int(r["chunks"]) == row.chunks
        if row.chunks:
            assert float(r["bpb"]) == pytest.approx(row.bpb, rel=1e-5)
        else:
            assert r["bpb"] == ""  # an empty bucket has no bits per byte

    from matplotlib.image import imread

    figure = plot_leakage(rows, tmp_path / "plots" / "leakage.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(figure)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0.05  # something is drawn


def test_validation_chunks_retrieve_only_from_training_documents(indexed: IndexedStore) -> None:
    """The store holds held-out documents out of the index; the batches the evaluation reads
    therefore never give a validation chunk a neighbour of its own, or any held-out, document."""
    batches = document_batches(indexed, indexed.held_out)
    own = np.concatenate([b.chunk_rows.numpy().ravel() for b in batches])
    found = np.concatenate([b.neighbour_rows.numpy().reshape(-1, 2) for b in batches])
    real = own >= 0
    assert (found[real] >= 0).all()
    own_documents = indexed.table.document_ids[own[real]]
    neighbour_documents = indexed.table.document_ids[found[real]]
    assert not np.isin(neighbour_documents, indexed.held_out).any()
    assert not (neighbour_documents == own_documents[:, None]).any()
    assert len(set(own_documents.tolist())) == len(indexed.held_out) == 3

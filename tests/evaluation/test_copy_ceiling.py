"""The copy ceiling: copyable targets, training n-grams per document, the ceiling's arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retro_platform.corpus.chunk_table import ChunkTable
from retro_platform.evaluation import evaluate
from retro_platform.evaluation.copy_ceiling import (
    ValidationLosses,
    copy_ceiling,
    copyable_from_neighbours,
    copyable_targets,
    ngram_hashes,
    training_ngrams,
    validation_losses,
)
from tests.evaluation.helpers import IndexedStore, document_batches

PAD = 0


def ngrams_of(documents: list[list[int]], n: int, chunk: int = 4) -> np.ndarray:
    """:func:`training_ngrams` of documents given as token lists, cut into padded chunks."""
    tokens, document_ids, positions = [], [], []
    for document, ids in enumerate(documents):
        for position, start in enumerate(range(0, len(ids), chunk)):
            part = ids[start : start + chunk]
            tokens.append(part + [PAD] * (chunk - len(part)))
            document_ids.append(document)
            positions.append(position)
    rows = len(tokens)
    table = ChunkTable(
        chunk_ids=np.arange(rows, dtype=np.int64),
        document_ids=np.array(document_ids, dtype=np.int64),
        positions=np.array(positions, dtype=np.int64),
    )
    tokens = np.array(tokens, dtype=np.int32).reshape(rows, chunk)
    return training_ngrams(tokens, table, np.array([], dtype=np.int64), PAD, [n])[n]


def brute_force(sequence: list[int], documents: list[list[int]], n: int) -> list[bool]:
    """Target ``t + 1`` copyable: the ``n`` tokens ending at it, none padding, inside one
    document."""
    runs = {tuple(d[i : i + n]) for d in documents for i in range(len(d) - n + 1)}
    out = []
    for t in range(1, len(sequence)):
        window = tuple(sequence[t - n + 1 : t + 1]) if t + 1 >= n else None
        out.append(window is not None and PAD not in window and window in runs)
    return out


def test_hand_made_runs() -> None:
    documents = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11]]
    ngrams = ngrams_of(documents, 3)
    sequence = np.array([[9, 3, 4, 5, 6, 1, 7, 8, 9, 10]])
    copyable = copyable_targets(sequence, ngrams, 3, PAD)[0].tolist()
    # targets 3 4 5 6 1 7 8 9 10: runs 9-3-4 no, 3-4-5 yes, 4-5-6 yes, 5-6-1 no, ..., 8-9-10 yes
    assert copyable == [False, False, True, True, False, False, False, False, True]


def test_a_run_across_two_documents_is_not_copyable() -> None:
    documents = [[1, 2, 3, 4], [5, 6, 7, 8]]  # 3-4-5 only exists across the boundary
    ngrams = ngrams_of(documents, 3, chunk=4)
    assert not copyable_targets(np.array([[3, 4, 5, 9]]), ngrams, 3, PAD).any()


def test_padding_is_never_copyable_and_short_chunks_do_not_join() -> None:
    # a short first chunk's padding must not make 2-PAD-PAD or let 1-2 meet the next chunk
    documents = [[1, 2]]
    ngrams = ngrams_of(documents + [[PAD, PAD, PAD]], 2, chunk=4)
    assert not copyable_targets(np.array([[2, PAD, PAD, PAD]]), ngrams, 2, PAD).any()
    assert copyable_targets(np.array([[1, 2]]), ngrams, 2, PAD).tolist() == [[True]]


def test_a_sequence_shorter_than_the_run_has_nothing_copyable() -> None:
    ngrams = ngrams_of([[1, 2, 3, 4, 5]], 4)
    assert copyable_targets(np.array([[1, 2, 3]]), ngrams, 4, PAD).shape == (1, 2)
    assert not copyable_targets(np.array([[1, 2, 3]]), ngrams, 4, PAD).any()


@settings(max_examples=60, deadline=None)
@given(
    documents=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=12), max_size=4),
    sequence=st.lists(st.integers(0, 4), min_size=2, max_size=16),
    n=st.integers(1, 4),
    chunk=st.integers(1, 5),
)
def test_matches_a_brute_force_search(documents, sequence, n, chunk) -> None:
    ngrams = ngrams_of(documents, n, chunk=chunk)
    found = copyable_targets(np.array([sequence]), ngrams, n, PAD)[0].tolist()
    assert found == brute_force(sequence, documents, n)


def test_hashes_tell_token_order_and_zero_apart() -> None:
    hashes = ngram_hashes(np.array([[0, 1], [1, 0], [0, 0], [1, 1]]), 2)[:, 0]
    assert len(set(hashes.tolist())) == 4
    with pytest.raises(ValueError, match="at least 1"):
        ngram_hashes(np.array([1, 2]), 0)


def test_ceiling_arithmetic() -> None:
    # two targets copyable out of four, every loss 1 nat over 8 bytes
    sequences = np.array([[1, 2, 3, 7, 7]])
    ngrams = {2: ngrams_of([[1, 2, 3]], 2)}
    measured = ValidationLosses(np.array([[1.0, 1.0, 1.0, 1.0]]), sequences, None, 8, PAD)
    (row,) = copy_ceiling(measured, ngrams)
    assert row.n == 2 and row.share == 0.5
    assert row.bpb == pytest.approx(4 / math.log(2) / 8)
    assert row.ceiling_bpb == pytest.approx(2 / math.log(2) / 8)
    assert row.reduction == pytest.approx(0.5)
    assert row.loss_copyable == 1.0 and row.loss_other == 1.0
    assert math.isnan(row.given_share) and math.isnan(row.loss_given)  # no neighbours given

    # neighbours: chunk 0 (tokens 1 2) retrieved [3 7 ...], which conditions positions 1..2
    retrieved = np.array([[[[3, 7, 9, 9]], [[PAD] * 4]]])  # (b=1, c=2, k=1, 2m=4)
    measured = ValidationLosses(np.array([[1.0, 2.0, 3.0, 4.0]]), sequences, retrieved, 8, PAD)
    (row,) = copy_ceiling(measured, ngrams)
    # position 2 predicts 7 after 3: the run 3-7 is in the neighbour; position 1 (3 after
    # 2) is conditioned by it too, but 2-3 is not in the neighbour
    assert row.given_share == 0.25 and row.loss_given == 3.0
    assert row.given_ceiling_bpb == pytest.approx(7 / math.log(2) / 8)


def brute_force_given(sequence: list[int], neighbours: list[list[list[int]]], n: int) -> list[bool]:
    """Position p is conditioned by chunk (p + 1) // m - 1's neighbours; its target's run of
    n tokens (none padding) must lie inside one of them."""
    length = len(sequence) - 1
    m = length // len(neighbours)
    out = []
    for p in range(length):
        source = (p + 1) // m - 1
        start = p + 2 - n
        if source < 0 or start < 0:
            out.append(False)
            continue
        run = tuple(sequence[start : p + 2])
        inside = {
            tuple(neighbour[i : i + n])
            for neighbour in neighbours[source]
            for i in range(len(neighbour) - n + 1)
        }
        out.append(PAD not in run and run in inside)
    return out


@settings(max_examples=80, deadline=None)
@given(
    data=st.data(),
    c=st.integers(1, 4),
    m=st.integers(1, 4),
    k=st.integers(1, 2),
    n=st.integers(1, 4),
)
def test_copyable_from_neighbours_matches_a_brute_force_search(data, c, m, k, n) -> None:
    token = st.integers(0, 3)
    sequence = data.draw(st.lists(token, min_size=c * m + 1, max_size=c * m + 1))
    neighbours = data.draw(
        st.lists(
            st.lists(st.lists(token, min_size=2 * m, max_size=2 * m), min_size=k, max_size=k),
            min_size=c,
            max_size=c,
        )
    )
    found = copyable_from_neighbours(np.array([sequence]), np.array([neighbours]), n, PAD)
    assert found[0].tolist() == brute_force_given(sequence, neighbours, n)


def test_neighbours_of_another_sequence_or_chunk_do_not_count() -> None:
    # two sequences, two chunks of 2: the run 5-6 is in sequence 1's neighbours only, and in
    # sequence 0's neighbours of chunk 1, which conditions no position that predicts it
    sequences = np.array([[1, 5, 6, 2, 3], [1, 5, 6, 2, 3]])
    retrieved = np.zeros((2, 2, 1, 4), dtype=np.int64)
    retrieved[0, 1, 0] = [5, 6, 8, 8]
    retrieved[1, 0, 0] = [5, 6, 8, 8]
    found = copyable_from_neighbours(sequences, retrieved, 2, PAD)
    assert found.tolist() == [[False] * 4, [False, True, False, False]]


def test_longer_runs_are_rarer(indexed: IndexedStore, trained) -> None:
    """On the real store: the shares shrink as n grows, the losses are the evaluation's, and a
    held-out document is never matched against itself."""
    ngrams = training_ngrams(
        indexed.chunk_tokens, indexed.table, indexed.held_out, indexed.pad_id, (4, 8, 16, 32)
    )
    batches = document_batches(indexed, indexed.held_out.tolist())
    measured = validation_losses(trained, batches, pad_id=indexed.pad_id, retrieval=True)
    sequences = measured.sequences
    rows = copy_ceiling(measured, ngrams)
    shares = [row.share for row in rows]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    assert all(0 <= row.ceiling_bpb < row.bpb for row in rows if row.share > 0)
    # the neighbours are training text: what they hold is copyable from the database too
    assert all(row.given_share <= row.share for row in rows)
    assert rows[0].given_share > 0
    assert rows[0].bpb == pytest.approx(
        evaluate(trained, batches, device=torch.device("cpu")).bpb, rel=1e-5
    )

    # with the held-out documents in the database, all of their text is copyable
    nothing_held_out = np.array([], dtype=np.int64)
    everything = training_ngrams(
        indexed.chunk_tokens, indexed.table, nothing_held_out, indexed.pad_id, [8]
    )[8]
    counted = sequences[:, 1:] != indexed.pad_id
    copyable = copyable_targets(sequences, everything, 8, indexed.pad_id)
    # every target but a sequence's first 7 (no 8 tokens before them in the sequence)
    assert copyable[:, 7:][counted[:, 7:]].all()
    assert not copyable_targets(sequences, ngrams[32], 32, indexed.pad_id)[counted].all()

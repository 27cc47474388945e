"""The data loader: sequences cut from the store's chunks, checked against SQL read here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import select

from retro_platform.cli.common import open_experiment
from retro_platform.corpus.chunk_table import validation_documents
from retro_platform.store.models import Chunk, Document
from retro_platform.training.sequences import SequenceData
from tests.training.helpers import TINY_TEXT, Setup

M, N, K = 16, 64, 2  # chunk size, sequence length, neighbours (helpers.tables)
C = N // M


def read_chunks(setup: Setup) -> dict[str, dict]:
    """Every chunk of the corpus straight from SQL, by chunk id."""
    _, store = open_experiment(str(setup.experiment.source))
    with store.session() as session:
        rows = session.execute(
            select(
                Chunk.id,
                Chunk.document_id,
                Chunk.position,
                Chunk.token_start,
                Chunk.text,
                Chunk.token_ids,
                Document.external_id,
            )
            .join(Document)
            .where(Document.corpus_id == setup.index.corpus_id)
        ).all()
        held_out = set(validation_documents(session, setup.index.corpus_id, 0.3).tolist())
    store.close()
    chunks = {
        r.id: dict(
            document=r.document_id,
            position=r.position,
            start=r.token_start,
            text=r.text,
            tokens=np.frombuffer(r.token_ids, dtype="<i4").astype(np.int64),
            name=r.external_id,
        )
        for r in rows
    }
    documents: dict[int, list[np.ndarray]] = {}
    for _, chunk in sorted(chunks.items(), key=lambda c: (c[1]["document"], c[1]["position"])):
        documents.setdefault(chunk["document"], []).append(chunk["tokens"])
    return {
        "chunks": chunks,
        "documents": {d: np.concatenate(parts) for d, parts in documents.items()},
        "held_out": held_out,
    }


def all_train(data: SequenceData):
    """One batch holding every training sequence (the first epoch's permutation)."""
    return next(data.batches("train", len(data.train), seed=3))


def test_sequences_are_document_text_with_next_token_targets_and_padding(setup) -> None:
    s = setup()
    sql = read_chunks(s)
    pad = s.tokenizer.pad_id
    ids = s.data.table.chunk_ids
    batch = all_train(s.data)
    w = len(s.data.train)
    assert batch.tokens.shape == (w, N + 1) and batch.tokens.dtype == torch.int64
    assert batch.retrieved.shape == (w, C, K, 2 * M)
    assert batch.chunk_rows.shape == (w, C) and batch.neighbour_rows.shape == (w, C, K)
    assert batch.chunk_bytes.shape == (w, C)
    assert sorted(batch.chunk_rows[:, 0].tolist()) == sorted(s.data.train.chunk_rows[:, 0].tolist())

    padded_windows = 0
    for tokens, rows, sizes in zip(batch.tokens, batch.chunk_rows, batch.chunk_bytes, strict=True):
        real = [ids[r] for r in rows.tolist() if r >= 0]
        documents = {sql["chunks"][i]["document"] for i in real}
        assert len(documents) == 1  # never across a document
        (document,) = documents
        assert document not in sql["held_out"]
        positions = [sql["chunks"][i]["position"] for i in real]
        assert positions == list(range(positions[0], positions[0] + len(real)))
        # the n + 1 tokens of the document from the window's first chunk on, padding after
        start = sql["chunks"][real[0]]["start"]
        expected = sql["documents"][document][start : start + N + 1]
        expected = np.pad(expected, (0, N + 1 - len(expected)), constant_values=pad)
        assert tokens.tolist() == expected.tolist()
        # bytes per chunk: the chunk text's UTF-8 length, 0 for padding
        want = [len(sql["chunks"][i]["text"].encode("utf-8")) for i in real]
        assert sizes.tolist() == want + [0] * (C - len(real))
        padded_windows += len(real) < C
    assert padded_windows > 0  # document ends were exercised

    # the tiny document: one padded window of three chunks
    tiny = [i for i, c in sql["chunks"].items() if c["name"].endswith("tiny.txt")]
    row = int(np.flatnonzero(ids == min(tiny))[0])
    (window,) = np.flatnonzero((batch.chunk_rows == row).any(1).numpy())
    assert batch.chunk_rows[window, len(tiny) :].tolist() == [-1] * (C - len(tiny))
    assert s.tokenizer.decode(batch.tokens[window].tolist()) == TINY_TEXT
    assert (batch.tokens[window, len(TINY_TEXT) :] == pad).all()
    assert (batch.retrieved[window, len(tiny) :] == pad).all()  # no chunk, no neighbours


def test_neighbours_are_those_of_the_neighbour_file(setup) -> None:
    s = setup()
    sql = read_chunks(s)
    pad = s.tokenizer.pad_id
    table = s.data.table
    stored = np.asarray(s.index.neighbours.open())  # (chunks, k) chunk ids
    batch = all_train(s.data)
    rows = batch.chunk_rows.numpy()
    want = np.where((rows >= 0)[..., None], table.rows_of(stored)[rows], -1)
    assert np.array_equal(batch.neighbour_rows.numpy(), want)

    by_place = {(c["document"], c["position"]): c["tokens"] for c in sql["chunks"].values()}
    checked = 0
    for b, u, j in zip(*np.nonzero(want >= 0), strict=True):
        neighbour = sql["chunks"][int(table.chunk_ids[want[b, u, j]])]
        following = by_place.get((neighbour["document"], neighbour["position"] + 1), [])
        expected = np.full(2 * M, pad)
        expected[: len(neighbour["tokens"])] = neighbour["tokens"]
        expected[M : M + len(following)] = following
        assert batch.retrieved[b, u, j].tolist() == expected.tolist()
        checked += 1
    assert checked > 100
    assert next(s.data.batches("train", 4, retrieval=False)).retrieved is None


def test_validation_comes_from_held_out_documents_first_windows_first(setup) -> None:
    s = setup()
    sql = read_chunks(s)
    ids = s.data.table.chunk_ids
    assert set(s.data.validation_documents.tolist()) == sql["held_out"]
    assert 1 <= len(sql["held_out"]) < len({c["document"] for c in sql["chunks"].values()})
    batches = list(s.data.batches("val", 3))
    assert [b.size for b in batches] == [3, 3, 2]  # [eval] sequences = 8, in batches of 3
    first = [sql["chunks"][ids[r]] for b in batches for r in b.chunk_rows[:, 0].tolist()]
    assert all(c["document"] in sql["held_out"] for c in first)
    # the first window of every held-out document comes first
    count = len(sql["held_out"])
    assert [c["position"] for c in first[:count]] == [0] * count
    assert len({c["document"] for c in first[:count]}) == count
    again = list(s.data.batches("val", 3))
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(batches, again, strict=True))
    counts = s.data.counts()
    assert counts["val/sequences"] == 8 and counts["train/sequences"] == len(s.data.train)
    assert counts["train/tokens"] > 0 and "training sequences" in s.data.describe()


def test_a_batch_is_a_function_of_seed_and_step(setup) -> None:
    data = setup().data
    stream = data.batches("train", 5, seed=11)
    first = [next(stream) for _ in range(200)]  # 1000 sequences: more than one epoch
    resumed = next(data.batches("train", 5, seed=11, start_step=137))
    assert torch.equal(resumed.tokens, first[137].tokens)
    assert torch.equal(resumed.retrieved, first[137].retrieved)
    other = next(data.batches("train", 5, seed=12))
    assert not torch.equal(other.tokens, first[0].tokens)
    # each epoch serves every sequence once
    w = len(data.train)
    assert w < 1000
    served = torch.cat([b.chunk_rows[:, 0] for b in first])[:w]
    assert sorted(served.tolist()) == sorted(data.train.chunk_rows[:, 0].tolist())


def test_cross_document_sequences_exclude_every_spanned_document(setup) -> None:
    s = setup(train={"cross_documents": True})
    data = s.data
    table = data.table
    stored_rows = table.rows_of(np.asarray(s.index.neighbours.open()))
    pad = s.tokenizer.pad_id

    # the windows run over the concatenated training documents, in order
    flat = data.train.chunk_rows.reshape(-1)
    flat = flat[flat >= 0]
    train_rows = np.flatnonzero(~np.isin(table.document_ids, data.validation_documents))
    order = train_rows[np.lexsort((table.positions[train_rows], table.document_ids[train_rows]))]
    assert np.array_equal(flat, order)

    batch = all_train(data)
    rows = batch.chunk_rows.numpy()
    spanning = dropped = 0
    for w in range(len(rows)):
        real = rows[w][rows[w] >= 0]
        documents = set(table.document_ids[real].tolist())
        spanning += len(documents) > 1
        neighbours = batch.neighbour_rows[w].numpy()
        found = neighbours[neighbours >= 0]
        assert not documents & set(table.document_ids[found].tolist())
        for u, r in enumerate(rows[w]):
            if r < 0:
                continue
            for j, n in enumerate(stored_rows[r]):
                if n >= 0 and table.document_ids[n] in documents:
                    dropped += 1
                    assert neighbours[u, j] == -1
                    assert (batch.retrieved[w, u, j] == pad).all()
                elif n >= 0:
                    assert neighbours[u, j] == n
        # the last token: the first of the next chunk in the stream, whatever its document
        where = np.flatnonzero(order == real[-1])[0]
        if len(real) == C and where + 1 < len(order):
            assert batch.tokens[w, -1] == data.chunk_tokens[order[where + 1], 0]
    assert spanning > 0 and dropped > 0
    # validation still never crosses a document
    for rows_ in data.val.chunk_rows:
        assert len(set(table.document_ids[rows_[rows_ >= 0]].tolist())) == 1


def test_without_an_index_every_neighbour_is_padding(setup) -> None:
    from retro_platform.training.sequences import load_sequence_data

    s = setup()
    _, store = open_experiment(str(s.experiment.source))
    data = load_sequence_data(s.experiment, store, None, s.tokenizer)
    store.close()
    assert (data.neighbour_rows == -1).all() and len(data.train) == len(s.data.train)
    batch = next(data.batches("train", 4, seed=1))
    assert torch.equal(batch.tokens, next(s.data.batches("train", 4, seed=1)).tokens)
    assert (batch.retrieved == s.tokenizer.pad_id).all()


def test_sequence_length_must_be_a_multiple_of_the_chunk_size(setup) -> None:
    from retro_platform.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple"):
        setup(train={"seq_len": 40})


def test_a_document_fraction_trains_on_a_stable_part_of_the_database(setup) -> None:
    from retro_platform.corpus.chunk_table import is_training

    full = setup()
    sql = read_chunks(full)
    names = {chunk["document"]: chunk["name"] for chunk in sql["chunks"].values()}
    database = set(names) - sql["held_out"]
    # the fraction that keeps about half of this corpus's database documents
    shares = sorted(
        fraction
        for fraction in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
        if 0 < sum(is_training(names[d], fraction) for d in database) < len(database)
    )
    assert shares, "some fraction splits the database"
    fraction = shares[len(shares) // 2]
    part = setup("part", train={"document_fraction": fraction})
    trained = set(part.data.training_documents.tolist())
    assert trained == {d for d in database if is_training(names[d], fraction)}
    assert 0 < len(trained) < len(database)
    assert set(full.data.training_documents.tolist()) == database
    assert not trained & sql["held_out"], "never a validation document"
    # stable: the same documents in a new load, and a smaller fraction takes a subset of them
    again = setup("again", train={"document_fraction": fraction})
    assert np.array_equal(again.data.training_documents, part.data.training_documents)
    smaller = setup("smaller", train={"document_fraction": fraction / 2})
    assert set(smaller.data.training_documents.tolist()) <= trained

    # the database is the same: one index, every database document in it
    assert part.index.index.id == full.index.index.id
    assert part.index.neighbours.id == full.index.neighbours.id
    table = part.data.table
    assert set(table.document_ids[part.data.database_rows].tolist()) == database
    # training sequences come from the trained documents only; validation is unchanged
    rows = all_train(part.data).chunk_rows.numpy()
    assert set(table.document_ids[rows[rows >= 0]].tolist()) == trained
    assert np.array_equal(part.data.val.chunk_rows, full.data.val.chunk_rows)
    # and the training chunks retrieve from documents the model never trains on
    found = part.data.train.neighbour_rows
    assert set(table.document_ids[found[found >= 0]].tolist()) - trained


def test_shuffled_neighbours_are_random_database_chunks_of_other_documents(setup) -> None:
    retrieved = setup()
    shuffled = setup("shuffled", train={"neighbours": "shuffled"})
    data, table = shuffled.data, shuffled.data.table
    validation = set(data.validation_documents.tolist())
    rows = data.neighbour_rows
    # as many neighbours as retrieved, in the same shapes
    assert rows.shape == retrieved.data.neighbour_rows.shape
    assert np.array_equal(rows < 0, retrieved.data.neighbour_rows < 0)
    real = rows >= 0
    owners = np.broadcast_to(table.document_ids[:, None], rows.shape)
    assert (table.document_ids[rows[real]] != owners[real]).all(), "never the chunk's document"
    assert not set(table.document_ids[rows[real]].tolist()) & validation, "never held out"
    assert (rows[real] != retrieved.data.neighbour_rows[real]).mean() > 0.5
    # training and validation batches both carry them, shaped as retrieved ones
    for split in ("train", "val"):
        got = next(data.batches(split, 4, seed=1))
        want = next(retrieved.data.batches(split, 4, seed=1))
        assert got.retrieved.shape == want.retrieved.shape
        assert torch.equal(got.tokens, want.tokens)
        picked = _with_padding(rows)[got.chunk_rows.numpy()]  # a padding chunk: row -1, none
        assert np.array_equal(got.neighbour_rows.numpy(), picked)
    # seeded: the same seed draws the same neighbours, another seed others
    again = setup("again", train={"neighbours": "shuffled"})
    assert np.array_equal(again.data.neighbour_rows, rows)
    other = setup(
        "other", experiment={"name": "training-test", "seed": 8}, train={"neighbours": "shuffled"}
    )
    assert not np.array_equal(other.data.neighbour_rows, rows)


def _with_padding(rows: np.ndarray) -> np.ndarray:
    return np.concatenate([rows, np.full((1, rows.shape[1]), -1, dtype=rows.dtype)])


def test_aligned_neighbours_are_document_windows_that_the_query_chunk_chooses(setup) -> None:
    from retro_platform.neighbours.aligned import alignment_offsets

    plain = setup()
    aligned = setup("aligned", retrieval={"align_neighbours": True})
    data = aligned.data
    assert plain.data.stream is None and data.stream is not None
    assert np.array_equal(data.neighbour_rows, plain.data.neighbour_rows), "the same neighbours"
    moved = 0
    for split in ("train", "val"):
        batch = next(data.batches(split, 6, seed=2))
        rows = batch.chunk_rows.numpy()
        neighbours = batch.neighbour_rows.numpy()
        assert batch.retrieved.shape == next(plain.data.batches(split, 6, seed=2)).retrieved.shape
        for w, u in zip(*np.nonzero(rows >= 0), strict=True):
            # the offsets come from the query chunk's own tokens and nothing else
            query = data.chunk_tokens[[rows[w, u]]]
            offsets = alignment_offsets(data.stream, query, neighbours[w, u][None], data.pad_id)
            want = data.stream.windows(neighbours[w, u], offsets[0], 2 * M, data.pad_id)
            assert np.array_equal(batch.retrieved[w, u].numpy(), want)
            moved += int((offsets != 0).sum())
    assert moved > 0, "some neighbours are moved off the chunk grid"

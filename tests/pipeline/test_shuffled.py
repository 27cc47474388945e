"""Shuffled neighbours (the control run's): random database chunks of other documents."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retro_platform.neighbours.shuffled import shuffled_neighbours


@settings(max_examples=60, deadline=None)
@given(
    documents=st.lists(st.integers(0, 5), min_size=1, max_size=60),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_every_real_neighbour_becomes_a_database_chunk_of_another_document(
    documents: list[int], k: int, seed: int, data: st.DataObject
) -> None:
    document_ids = np.asarray(documents, dtype=np.int64)
    n = len(document_ids)
    retrieved = np.asarray(
        data.draw(
            st.lists(
                st.lists(st.integers(-1, n - 1), min_size=k, max_size=k), min_size=n, max_size=n
            )
        ),  # fmt: skip
        dtype=np.int64,
    )
    database = np.asarray(sorted(data.draw(st.sets(st.integers(0, n - 1)))), dtype=np.int64)

    shuffled = shuffled_neighbours(retrieved, document_ids, database, seed)

    assert shuffled.shape == retrieved.shape and shuffled.dtype == np.int64
    assert (shuffled[retrieved < 0] == -1).all(), "a missing neighbour stays missing"
    real = shuffled >= 0
    assert np.isin(shuffled[real], database).all(), "only chunks the database holds"
    owners = np.broadcast_to(document_ids[:, None], shuffled.shape)
    assert (document_ids[shuffled[real]] != owners[real]).all(), "never the chunk's document"
    # a slot stays empty only when no database chunk of another document exists
    for row, slot in zip(*np.nonzero((retrieved >= 0) & ~real), strict=True):
        assert (document_ids[database] == document_ids[row]).all(), (row, slot)
    assert np.array_equal(shuffled_neighbours(retrieved, document_ids, database, seed), shuffled)


def test_draws_are_spread_over_the_database_and_change_with_the_seed() -> None:
    document_ids = np.repeat(np.arange(50), 20)  # 50 documents of 20 chunks
    retrieved = np.zeros((len(document_ids), 2), dtype=np.int64)
    database = np.arange(len(document_ids))
    first = shuffled_neighbours(retrieved, document_ids, database, seed=0)
    assert len(np.unique(first)) > 0.5 * len(database)
    assert (first[:, 0] != first[:, 1]).mean() > 0.99
    assert (shuffled_neighbours(retrieved, document_ids, database, seed=1) != first).mean() > 0.99

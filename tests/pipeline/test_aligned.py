"""Aligned neighbours: document windows that line up with the query chunk, checked against
brute force on random corpora."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retro_platform.corpus.chunk_table import ChunkTable
from retro_platform.neighbours.aligned import (
    TokenStream,
    aligned_neighbour_tokens,
    alignment_offsets,
)
from retro_platform.neighbours.retrieved import neighbour_tokens

PAD = 0


def corpus(documents: list[list[int]], m: int, seed: int = 0):
    """A chunk table (rows in a shuffled id order, as a store may hold them) and its padded
    ``(chunks, m)`` tokens for documents given as token lists."""
    rows = []
    for document, tokens in enumerate(documents):
        for position, start in enumerate(range(0, len(tokens), m)):
            rows.append((document, position, tokens[start : start + m]))
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    table = ChunkTable(
        np.arange(len(rows), dtype=np.int64) + 10,
        np.array([r[0] for r in rows], dtype=np.int64),
        np.array([r[1] for r in rows], dtype=np.int64),
    )
    tokens = np.full((len(rows), m), PAD, dtype=np.int32)
    for i, (_, _, part) in enumerate(rows):
        tokens[i, : len(part)] = part
    return table, tokens, rows


def documents_strategy(max_documents: int = 4, max_length: int = 30):
    return st.lists(
        st.lists(st.integers(1, 5), min_size=1, max_size=max_length),
        min_size=1,
        max_size=max_documents,
    )


@settings(max_examples=80, deadline=None)
@given(documents=documents_strategy(), m=st.integers(2, 6), seed=st.integers(0, 99))
def test_a_window_at_offset_zero_is_the_chunk_and_its_continuation(documents, m, seed) -> None:
    table, tokens, _ = corpus(documents, m, seed)
    stream = TokenStream.build(table, tokens, PAD)
    rows = np.arange(-1, len(table))[:, None]  # every row, and a missing neighbour
    expected = neighbour_tokens(tokens, table.continuation_rows(), rows, PAD)
    got = aligned_neighbour_tokens(stream, rows, np.zeros_like(rows), PAD)
    assert np.array_equal(got, expected)


@settings(max_examples=80, deadline=None)
@given(
    documents=documents_strategy(),
    m=st.integers(2, 6),
    seed=st.integers(0, 99),
    data=st.data(),
)
def test_windows_and_offsets_match_brute_force(documents, m, seed, data) -> None:
    table, tokens, rows = corpus(documents, m, seed)
    stream = TokenStream.build(table, tokens, PAD)
    n = len(table)
    neighbours = np.array(
        data.draw(
            st.lists(
                st.lists(st.integers(-1, n - 1), min_size=2, max_size=2), min_size=n, max_size=n
            )
        ),  # fmt: skip
        dtype=np.int64,
    )
    min_matches = data.draw(st.integers(1, m))
    offsets = alignment_offsets(stream, tokens, neighbours, PAD, min_matches)

    def text(row: int) -> list[int]:  # the document of a row, and where the row starts in it
        document, position, _ = rows[row]
        return documents[document], position * m

    for query in range(n):
        for slot in range(2):
            row = neighbours[query, slot]
            if row < 0:
                assert offsets[query, slot] == 0
                continue
            document, start = text(row)

            def matches(delta: int, query=query, document=document, start=start) -> int:
                return sum(
                    1
                    for i in range(m)
                    if tokens[query, i] != PAD
                    and 0 <= start + delta + i < len(document)
                    and document[start + delta + i] == tokens[query, i]
                )

            scores = {delta: matches(delta) for delta in range(-(m - 1), m)}
            best = max(scores.values())
            delta = offsets[query, slot]
            if best < min_matches:
                assert delta == 0
            else:
                assert scores[delta] == best
                assert abs(delta) == min(abs(d) for d, s in scores.items() if s == best)
            window = aligned_neighbour_tokens(stream, neighbours[query, slot], delta, PAD)
            want = [
                document[start + delta + i] if 0 <= start + delta + i < len(document) else PAD
                for i in range(2 * m)
            ]
            assert window.tolist() == want, "a window never reaches into another document"


def test_a_copy_off_the_chunk_grid_is_found_and_lined_up() -> None:
    m = 8
    rng = np.random.default_rng(0)
    shared = rng.integers(10, 200, 40).tolist()
    # the shared text starts 3 tokens into document 0's second chunk and at document 1's start
    documents = [rng.integers(10, 200, 11).tolist() + shared, shared + [7] * 5]
    table, tokens, rows = corpus(documents, m)
    stream = TokenStream.build(table, tokens, PAD)
    query = next(i for i, r in enumerate(rows) if r[:2] == (0, 2))  # tokens 16..23 of doc 0
    neighbour = next(i for i, r in enumerate(rows) if r[:2] == (1, 0))
    offsets = alignment_offsets(stream, tokens[[query]], np.array([[neighbour, -1]]), PAD)
    assert offsets.tolist() == [[5, 0]]  # doc 0's token 16 is the shared text's token 5
    window = aligned_neighbour_tokens(stream, np.array([neighbour]), offsets[0, :1], PAD)[0]
    assert window[:m].tolist() == tokens[query].tolist()
    following = documents[0][24:32]
    assert window[m:].tolist() == following, "the continuation lines up with the next chunk"
    # unrelated text keeps the chunk grid
    far = alignment_offsets(stream, np.full((1, m), 3, np.int32), np.array([[neighbour, -1]]), PAD)
    assert far.tolist() == [[0, 0]]

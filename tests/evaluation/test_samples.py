"""Sample generations with autoretrieval, and their Markdown artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import select

from retro_platform.errors import ConfigError
from retro_platform.evaluation import generate_samples, samples_markdown
from retro_platform.evaluation.autoretrieval import make_retriever
from retro_platform.pipeline import search
from retro_platform.store.models import Chunk, Document
from tests.evaluation.helpers import IndexedStore


@pytest.fixture(scope="module")
def retriever(indexed: IndexedStore):
    return make_retriever(
        indexed.experiment,
        indexed.store,
        indexed.result.index,
        indexed.tokenizer,
        indexed.experiment.plugin_table("embedder").build(),
    )


class Counting:
    """Passes every call on to the real retriever and keeps the chunks it was asked about."""

    def __init__(self, retrieve) -> None:
        self.retrieve, self.asked = retrieve, []

    def __call__(self, chunks: np.ndarray):
        self.asked.extend(np.asarray(chunks).tolist())
        return self.retrieve(chunks)


def prompt_of(indexed: IndexedStore, text: str) -> np.ndarray:
    return indexed.tokenizer.encode(text).ids


def generate(indexed, model, retrieve, prompts, **overrides):
    options = dict(
        max_tokens=40,
        temperature=1.0,
        top_k=0,
        chunk_size=indexed.m,
        pad_id=indexed.pad_id,
        seed=7,
        decode=indexed.tokenizer.decode,
        describe=getattr(retrieve, "describe", None),
    )
    options.update(overrides)
    return generate_samples(model, prompts, retrieve, **options)


def test_make_retriever_finds_what_search_finds(indexed: IndexedStore, retriever) -> None:
    rows = [5, 40, 123]  # any chunks: their text searched two ways
    chunks = indexed.chunk_tokens[rows]
    tokens, ids = retriever(chunks)
    assert tokens.shape == (3, 2, 2 * indexed.m) and tokens.dtype == np.int64
    for row, found, neighbour_tokens in zip(rows, ids, tokens, strict=True):
        with indexed.store.session() as session:
            text = session.scalar(
                select(Chunk.text).where(Chunk.id == int(indexed.table.chunk_ids[row]))
            )
        hits = search(indexed.experiment, indexed.store, text, 2)
        assert found.tolist() == [hit.chunk_id for hit in hits]
        # each neighbour's tokens begin with the retrieved chunk's own tokens
        for chunk_id, neighbour in zip(found, neighbour_tokens, strict=True):
            row_of = indexed.table.rows_of(np.array([chunk_id]))[0]
            assert neighbour[: indexed.m].tolist() == indexed.chunk_tokens[row_of].tolist()
    described = retriever.describe(ids)
    with indexed.store.session() as session:
        names = dict(
            session.execute(
                select(Chunk.id, Document.external_id)
                .join(Document)
                .where(Chunk.id.in_(ids.ravel().tolist()))
            ).all()
        )
    assert {i: d.document for i, d in described.items()} == names


def test_seeded_generation_is_deterministic(indexed, trained, retriever) -> None:
    prompts = [prompt_of(indexed, "def insort_left(a, x, lo=0, hi=None):\n    ")]
    first = generate(indexed, trained, retriever, prompts, top_k=20)
    again = generate(indexed, trained, retriever, prompts, top_k=20)
    other = generate(indexed, trained, retriever, prompts, top_k=20, seed=8)
    assert first == again
    assert first[0].generated_ids != other[0].generated_ids
    assert indexed.pad_id not in first[0].generated_ids
    # top-1 sampling is greedy decoding
    top1 = generate(indexed, trained, retriever, prompts, top_k=1)
    greedy = generate(indexed, trained, retriever, prompts, temperature=0)
    assert top1[0].generated_ids == greedy[0].generated_ids


def test_greedy_generation_is_the_argmax_of_a_recomputation(indexed, trained, retriever) -> None:
    prompt = list(prompt_of(indexed, "import os\nimport re\nimport fnmatch\n\n__all__ = ['glob', "))
    [sample] = generate(indexed, trained, retriever, [prompt], temperature=0, max_tokens=50)
    m, text = indexed.m, list(prompt)
    for token in sample.generated_ids:
        chunks = len(text) // m
        retrieved = None
        if chunks:
            found, _ = retriever(np.array(text[: chunks * m]).reshape(chunks, m))
            retrieved = torch.from_numpy(found)[None]
        with torch.no_grad():
            logits = trained(torch.tensor([text]), retrieved)[0, -1]
        logits[indexed.pad_id] = -torch.inf
        assert token == int(logits.argmax())
        text.append(token)


def test_each_completed_chunk_is_retrieved_once_and_recorded(indexed, trained, retriever) -> None:
    m = indexed.m
    prompts = [
        prompt_of(indexed, "x" * (m + 5)),  # one complete chunk in the prompt
        prompt_of(indexed, "import"),  # none
    ]
    counting = Counting(retriever)
    counting.describe = retriever.describe
    max_tokens = 2 * m + 10
    samples = generate(indexed, trained, counting, prompts, max_tokens=max_tokens)
    expected = [(len(p) + max_tokens - 1) // m for p in prompts]  # chunks before the last token
    assert [len(s.retrievals) for s in samples] == expected
    assert len(counting.asked) == sum(expected)
    for sample in samples:
        text = list(sample.prompt_ids) + list(sample.generated_ids)
        assert [r.chunk for r in sample.retrievals] == list(range(len(sample.retrievals)))
        for r in sample.retrievals:
            asked = text[r.chunk * m : (r.chunk + 1) * m]
            assert asked in counting.asked
            assert r.query == indexed.tokenizer.decode(asked)
            assert r.in_prompt == ((r.chunk + 1) * m <= len(sample.prompt_ids))
            assert len(r.neighbours) == 2
            _, ids = retriever(np.array([asked]))
            assert [n.chunk_id for n in r.neighbours] == ids[0].tolist()
            for n in r.neighbours:
                assert (
                    n.document
                    == indexed.documents[
                        int(
                            indexed.table.document_ids[
                                indexed.table.rows_of(np.array([n.chunk_id]))[0]
                            ]
                        )
                    ]
                )
                assert n.text and n.position is not None
    assert samples[0].retrievals[0].in_prompt and not samples[1].retrievals[0].in_prompt
    assert samples[0].prompt == "x" * (m + 5)

    markdown = samples_markdown(samples)
    assert markdown.startswith("# Sample generations")
    assert markdown.count("## Sample ") == 2
    for sample in samples:
        for r in sample.retrievals:
            for n in r.neighbours:
                assert f"| {n.chunk_id} | {n.document}" in markdown


def test_a_text_longer_than_the_model_reads_through_a_window(indexed, trained, retriever) -> None:
    # max_seq_len is 4 chunks: prompt + generation run well past it
    prompt = prompt_of(indexed, "def translate(pat):\n" * 8)
    assert len(prompt) > trained.max_seq_len
    [sample] = generate(indexed, trained, retriever, [prompt], max_tokens=70, temperature=0)
    assert len(sample.generated_ids) == 70
    assert len(sample.retrievals) == (len(prompt) + 69) // indexed.m


def test_markdown_survives_backticks_and_pipes() -> None:
    from retro_platform.evaluation.samples import NeighbourChunk, Retrieval, Sample

    sample = Sample(
        prompt="a ``` fence",
        text="x | y\n````",
        prompt_ids=(1,),
        generated_ids=(2,),
        retrievals=(Retrieval(0, True, "q|uery", (NeighbourChunk(9, "doc|name", 3, "t`x|t"),)),),
    )
    markdown = samples_markdown([sample])
    assert "`````text\nx | y\n````\n`````" in markdown  # a fence longer than any run inside
    assert "| 0 | prompt | q\\|uery | 9 | doc\\|name (chunk 3) | t\\`x\\|t |" in markdown


def test_bad_generation_settings_are_clear_errors(indexed, trained, retriever) -> None:
    with pytest.raises(ConfigError, match="at least one token"):
        generate(indexed, trained, retriever, [[]])
    with pytest.raises(ConfigError, match="max_tokens"):
        generate(indexed, trained, retriever, [[5]], max_tokens=0)


def test_an_aligned_retriever_gives_windows_lined_up_with_the_query(indexed) -> None:
    from retro_platform.neighbours.aligned import TokenStream, alignment_offsets

    experiment = indexed.experiment.model_copy(
        update={
            "retrieval": indexed.experiment.retrieval.model_copy(update={"align_neighbours": True})
        }
    )
    aligned = make_retriever(
        experiment,
        indexed.store,
        indexed.result.index,
        indexed.tokenizer,
        experiment.plugin_table("embedder").build(),
    )
    stream = TokenStream.build(indexed.table, indexed.chunk_tokens, indexed.pad_id)
    chunks = indexed.chunk_tokens[[5, 40, 123]]
    tokens, ids = aligned(chunks)
    rows = indexed.table.rows_of(ids)
    offsets = alignment_offsets(stream, chunks, rows, indexed.pad_id)
    assert np.array_equal(tokens, stream.windows(rows, offsets, 2 * indexed.m, indexed.pad_id))
    assert (offsets != 0).any()

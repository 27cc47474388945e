"""Generation with autoretrieval on a real store and a trained tiny RETRO: the cache equals
recomputation at every step, the neighbours are what `search` finds, seeds reproduce, and the
Markdown artifact shows the sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sqlalchemy import select

from retro_platform.errors import ConfigError
from retro_platform.generation import (
    Neighbour,
    RunRetrieval,
    SamplingSettings,
    generate,
    generate_samples,
    samples_markdown,
    search,
)
from retro_platform.generation.samples import Retrieval, Sample
from retro_platform.store.models import Chunk, Document
from tests.evaluation.helpers import IndexedStore

TOL = 1e-4


@pytest.fixture(scope="module")
def retriever(indexed: IndexedStore) -> RunRetrieval:
    return RunRetrieval(
        indexed.experiment, indexed.store, index=indexed.result.index, tokenizer=indexed.tokenizer
    )


class Counting:
    """Passes every call on to the real retrieval and keeps the chunks it was asked about."""

    def __init__(self, retrieve) -> None:
        self.retrieve, self.asked = retrieve, []
        self.described = retrieve.described

    def __call__(self, chunks: np.ndarray):
        self.asked.extend(np.asarray(chunks).tolist())
        return self.retrieve(chunks)


def prompt_of(indexed: IndexedStore, text: str) -> list[int]:
    return indexed.tokenizer.encode(text).ids.tolist()


def sample(indexed, model, retrieve, prompts, **overrides):
    options = dict(max_tokens=40, temperature=1.0, seed=7)
    options.update(overrides)
    return generate_samples(
        model,
        prompts,
        retrieve,
        SamplingSettings(**options),
        pad_id=indexed.pad_id,
        decode=indexed.tokenizer.decode,
        describe=getattr(retrieve, "described", None),
    )


def recomputed_logits(model, retriever, tokens: list[int], m: int) -> torch.Tensor:
    """The next-token logits of a full forward pass over ``tokens`` with the neighbours of
    every completed chunk (today's recompute path)."""
    chunks = len(tokens) // m
    retrieved = None
    if chunks:
        found = retriever(np.array(tokens[: chunks * m]).reshape(chunks, m))
        retrieved = torch.from_numpy(found.tokens)[None]
    with torch.no_grad():
        return model(torch.tensor([tokens]), retrieved)[0, -1]


def test_retrieval_finds_what_search_finds(indexed: IndexedStore, retriever) -> None:
    rows = [5, 40, 123]  # any chunks: their text searched two ways
    chunks = indexed.chunk_tokens[rows]
    found = retriever(chunks)
    assert found.tokens.shape == (3, 2, 2 * indexed.m) and found.tokens.dtype == np.int64
    for row, ids, scores, neighbour_tokens in zip(
        rows, found.ids, found.scores, found.tokens, strict=True
    ):
        with indexed.store.session() as session:
            text = session.scalar(
                select(Chunk.text).where(Chunk.id == int(indexed.table.chunk_ids[row]))
            )
        hits = search(indexed.experiment, indexed.store, text, 2)
        assert ids.tolist() == [hit.chunk_id for hit in hits]
        assert scores.tolist() == pytest.approx([hit.score for hit in hits], abs=1e-6)
        # each neighbour's tokens begin with the retrieved chunk's own tokens
        for chunk_id, neighbour in zip(ids, neighbour_tokens, strict=True):
            row_of = indexed.table.rows_of(np.array([chunk_id]))[0]
            assert neighbour[: indexed.m].tolist() == indexed.chunk_tokens[row_of].tolist()
    described = retriever.described(found.ids[0], found.scores[0])
    with indexed.store.session() as session:
        names = dict(
            session.execute(
                select(Chunk.id, Document.external_id)
                .join(Document)
                .where(Chunk.id.in_(found.ids[0].tolist()))
            ).all()
        )
    assert {n.chunk_id: n.document for n in described} == names


@pytest.mark.parametrize(
    "prompt_lengths", [[45], [64], [20, 45, 33]], ids=["mid-chunk", "on-boundary", "batch"]
)
def test_cached_logits_equal_recomputation_at_every_step(
    indexed, trained, retriever, prompt_lengths
) -> None:
    """Across chunk boundaries, through the window slide past max_seq_len (4 chunks), with a
    prompt ending mid-chunk or on a boundary, and in a batch of prompts of different lengths."""
    text = prompt_of(indexed, "def translate(pat):\n    i, n = 0, len(pat)\n    res = ''\n" * 3)
    prompts = [text[:length] for length in prompt_lengths]
    max_tokens = 100  # prompt + output pass max_seq_len = 128: the window slides
    seen: list[tuple[int, torch.Tensor]] = []
    [*generations] = generate(
        trained,
        prompts,
        retriever,
        SamplingSettings(max_tokens=max_tokens, temperature=0.9, seed=3),
        pad_id=indexed.pad_id,
        on_logits=lambda position, logits: seen.append((position, logits.clone())),
    )
    m, max_len = indexed.m, trained.max_seq_len
    for position, logits in seen:
        for row, generation in enumerate(generations):
            everything = generation.prompt_ids + generation.generated_ids
            if position < len(generation.prompt_ids) or position > len(everything) - 1:
                continue  # forced from the prompt, or finished: the logits are not used
            tokens = everything[:position]
            start = -(-(len(tokens) - max_len) // m) * m if len(tokens) > max_len else 0
            expected = recomputed_logits(trained, retriever, tokens[start:], m)
            torch.testing.assert_close(logits[row], expected, atol=TOL, rtol=0)
    assert max(len(g.prompt_ids) + max_tokens for g in generations) > max_len
    assert all(len(g.generated_ids) == max_tokens for g in generations)


def test_a_row_of_a_batch_is_the_row_alone(indexed, trained, retriever) -> None:
    prompts = [prompt_of(indexed, "import os\nimport re\n"), prompt_of(indexed, "def f(x):\n" * 5)]
    together = sample(indexed, trained, retriever, prompts, temperature=0.8, top_k=10)
    alone = sample(indexed, trained, retriever, prompts[1:], temperature=0.8, top_k=10, seed=8)
    assert together[1].generated_ids == alone[0].generated_ids


def test_seeded_generation_is_deterministic(indexed, trained, retriever) -> None:
    prompts = [prompt_of(indexed, "def insort_left(a, x, lo=0, hi=None):\n    ")]
    first = sample(indexed, trained, retriever, prompts, top_k=20)
    again = sample(indexed, trained, retriever, prompts, top_k=20)
    other = sample(indexed, trained, retriever, prompts, top_k=20, seed=8)
    assert first == again
    assert first[0].generated_ids != other[0].generated_ids
    assert indexed.pad_id not in first[0].generated_ids
    # top-1 sampling and a tiny nucleus are greedy decoding; greedy repeats itself
    top1 = sample(indexed, trained, retriever, prompts, top_k=1)
    nucleus = sample(indexed, trained, retriever, prompts, top_p=1e-6)
    greedy = sample(indexed, trained, retriever, prompts, temperature=0)
    assert top1[0].generated_ids == greedy[0].generated_ids == nucleus[0].generated_ids
    assert sample(indexed, trained, retriever, prompts, temperature=0, seed=99) == greedy
    # a nucleus below 1 changes what is drawn
    half = sample(indexed, trained, retriever, prompts, top_p=0.5)
    assert half[0].generated_ids != first[0].generated_ids


def test_each_completed_chunk_is_retrieved_once_and_recorded(indexed, trained, retriever) -> None:
    m = indexed.m
    prompts = [
        prompt_of(indexed, "x" * (m + 5)),  # one complete chunk in the prompt
        prompt_of(indexed, "import"),  # none
    ]
    counting = Counting(retriever)
    max_tokens = 2 * m + 10
    samples = sample(indexed, trained, counting, prompts, max_tokens=max_tokens)
    expected = [(len(p) + max_tokens - 1) // m for p in prompts]  # chunks before the last token
    assert [len(s.retrievals) for s in samples] == expected
    assert len(counting.asked) == sum(expected)
    for s in samples:
        text = list(s.prompt_ids) + list(s.generated_ids)
        assert [r.chunk for r in s.retrievals] == list(range(len(s.retrievals)))
        for r in s.retrievals:
            asked = text[r.chunk * m : (r.chunk + 1) * m]
            assert asked in counting.asked
            assert r.query == indexed.tokenizer.decode(asked)
            assert r.in_prompt == ((r.chunk + 1) * m <= len(s.prompt_ids))
            assert len(r.neighbours) == 2
            # the neighbours used are exactly what `search` returns for the chunk's text
            hits = search(indexed.experiment, indexed.store, r.query, 2)
            assert [n.chunk_id for n in r.neighbours] == [h.chunk_id for h in hits]
            for n in r.neighbours:
                row = indexed.table.rows_of(np.array([n.chunk_id]))[0]
                assert n.document == indexed.documents[int(indexed.table.document_ids[row])]
                assert n.text and n.position is not None and np.isfinite(n.score)
    assert samples[0].retrievals[0].in_prompt and not samples[1].retrievals[0].in_prompt
    assert samples[0].prompt == "x" * (m + 5)

    markdown = samples_markdown(samples)
    assert markdown.startswith("# Sample generations")
    assert markdown.count("## Sample ") == 2
    for s in samples:
        for r in s.retrievals:
            for n in r.neighbours:
                assert f"| {n.chunk_id} | {n.score:.3f} | {n.document}" in markdown


def test_stop_strings_end_a_row_and_are_left_out(indexed, trained, retriever) -> None:
    prompts = [prompt_of(indexed, "def f(x):\n    return x\n\n")]
    [free] = sample(indexed, trained, retriever, prompts, temperature=0, max_tokens=60)
    stop = free.text[10:12]  # two characters the free generation writes at 10
    [stopped] = sample(
        indexed, trained, retriever, prompts, temperature=0, max_tokens=60, stop=(stop,)
    )
    assert stopped.finish == "stop" and free.finish == "length"
    assert stopped.text == free.text[: free.text.find(stop)]
    assert len(stopped.generated_ids) < 60


def test_a_stop_string_of_many_bytes_is_seen_whole(indexed) -> None:
    """A byte-level tokenizer takes three tokens for a CJK character: the tail decoded to look
    for a stop string must hold its every byte, or generation runs on past it."""
    from retro_platform.generation.decoding import stop_reached

    tokenizer, stop = indexed.tokenizer, "日本語のテキスト"
    assert tokenizer.vocab_size == 257  # the bytes tokenizer
    ids = tokenizer.encode("x = '" + stop).ids.tolist()
    assert stop_reached(ids, tokenizer.decode, (stop,))
    assert not stop_reached(ids[:-1], tokenizer.decode, (stop,))


def test_the_token_buffer_grows_past_its_first_size(
    indexed, trained, retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--max-tokens is not allocated up front (a huge one would not fit in memory): the buffer
    of tokens grows as the text does, and the text is the same."""
    from retro_platform.generation import decoding

    prompts = [prompt_of(indexed, "def f(x):\n    return x\n\n"), prompt_of(indexed, "import")]
    [*whole] = sample(indexed, trained, retriever, prompts, max_tokens=50)
    monkeypatch.setattr(decoding, "_FIRST_ROOM", 3)
    [*grown] = sample(indexed, trained, retriever, prompts, max_tokens=50)
    assert [s.text for s in grown] == [s.text for s in whole]
    assert [s.retrievals for s in grown] == [s.retrievals for s in whole]


def test_a_tiny_temperature_samples_the_likeliest_token(indexed, trained, retriever) -> None:
    """Logits divided by 1e-40 overflow float32; scaled from the best one they cannot."""
    prompts = [prompt_of(indexed, "def f(x):\n    return x\n\n")]
    [greedy] = sample(indexed, trained, retriever, prompts, temperature=0)
    [tiny] = sample(indexed, trained, retriever, prompts, temperature=1e-40)
    assert tiny.text == greedy.text


def test_excluded_documents_are_never_retrieved(indexed, retriever) -> None:
    text = indexed.tokenizer.decode(indexed.chunk_tokens[40])
    hits = search(indexed.experiment, indexed.store, text, 4)
    first = hits[0].document
    kept = search(indexed.experiment, indexed.store, text, 4, exclude_documents=(first,))
    assert first not in {hit.document for hit in kept}
    # the others in the order a longer search ranks them
    longer = search(indexed.experiment, indexed.store, text, 60)
    others = [h.chunk_id for h in longer if h.document != first]
    assert [h.chunk_id for h in kept] == others[:4]
    assert len(kept) == 4
    with pytest.raises(ConfigError, match="--exclude-document 'nope.py' is not a document") as e:
        search(indexed.experiment, indexed.store, text, 4, exclude_documents=("nope.py",))
    # where `search` shows a document id: after the score (its lines have no ':')
    assert "after the score" in str(e.value)


def test_markdown_survives_backticks_and_pipes() -> None:
    s = Sample(
        prompt="a ``` fence",
        text="x | y\n````",
        prompt_ids=(1,),
        generated_ids=(2,),
        retrievals=(Retrieval(0, True, "q|uery", (Neighbour(9, 0.5, "doc|name", 3, "t`x|t"),)),),
    )
    markdown = samples_markdown([s])
    assert "`````text\nx | y\n````\n`````" in markdown  # a fence longer than any run inside
    assert "| 0 | prompt | q\\|uery | 9 | 0.500 | doc\\|name (chunk 3) | t\\`x\\|t |" in markdown


def test_bad_generation_input_is_a_clear_error(indexed, trained, retriever) -> None:
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        sample(indexed, trained, retriever, [[]])
    with pytest.raises(ConfigError, match="max-tokens"):
        sample(indexed, trained, retriever, [[5]], max_tokens=0)
    with pytest.raises(ConfigError, match="top-p must be in \\(0, 1\\]"):
        sample(indexed, trained, retriever, [[5]], top_p=1.5)
    with pytest.raises(ConfigError, match="top-p must be in \\(0, 1\\]"):
        sample(indexed, trained, retriever, [[5]], top_p=0)
    with pytest.raises(ConfigError, match="--temperature must be finite"):
        sample(indexed, trained, retriever, [[5]], temperature=float("inf"))
    with pytest.raises(ConfigError, match="--seed must fit in 64 bits"):
        sample(indexed, trained, retriever, [[5]], seed=2**70)
    too_long = [5] * (trained.max_seq_len + 1)
    with pytest.raises(ConfigError, match="is 129 tokens; the model reads at most 128"):
        sample(indexed, trained, retriever, [too_long])


def test_an_aligned_retrieval_gives_windows_lined_up_with_the_query(indexed) -> None:
    from retro_platform.neighbours.aligned import TokenStream, alignment_offsets

    experiment = indexed.experiment.model_copy(
        update={
            "retrieval": indexed.experiment.retrieval.model_copy(update={"align_neighbours": True})
        }
    )
    aligned = RunRetrieval(
        experiment, indexed.store, index=indexed.result.index, tokenizer=indexed.tokenizer
    )
    stream = TokenStream.build(indexed.table, indexed.chunk_tokens, indexed.pad_id)
    chunks = indexed.chunk_tokens[[5, 40, 123]]
    found = aligned(chunks)
    rows = indexed.table.rows_of(found.ids)
    offsets = alignment_offsets(stream, chunks, rows, indexed.pad_id)
    expected = stream.windows(rows, offsets, 2 * indexed.m, indexed.pad_id)
    assert np.array_equal(found.tokens, expected)
    assert (offsets != 0).any()

"""What the generation benchmark measures: the tasks its worker processes run.

Two kinds of task. ``prepare`` ingests and indexes one experiment (reusing what its store
holds) and picks the prompts: the first tokens of held-out (validation) documents. ``compare``
opens the experiment's model (the trained checkpoint when there is one, else a seeded
random-weight model of the same configuration) and times several ways of generating the same
tokens, alternating between them repeat by repeat so that a burst of other work on the machine
lands on all of them alike:

* ``cached``: :func:`retro_platform.generation.generate`, greedy, with the run's retrieval
  (:class:`~retro_platform.generation.RunRetrieval`) or with retrieval off;
* ``recompute``: the loop generation had before the cache (the old
  ``evaluation/samples.py`` ``_generate_one``): every new token is a full
  ``model(window, retrieved)`` forward over the chunk-aligned window with the neighbours of
  every completed chunk in it, the same retrieval;
* ``gpt2-generate`` / ``gpt2-loop``: a Hugging Face ``GPT2LMHeadModel`` of the same width,
  depth, heads, feed-forward width and vocabulary, random weights, with its own KV cache:
  ``model.generate(use_cache=True, do_sample=False)`` and a plain ``past_key_values`` loop.

Inside ``cached`` and ``recompute`` the model's and the retrieval's parts are timed by wrapping
them (a ``perf_counter`` pair per call): the embedder, the index search, the neighbour tokens,
the encoder, the CCA key projection, the prompt prefill, the single-token steps and the
re-prefills when the window slides.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import ensure_repo_on_path, log, median, seed_everything
from _tasks import Worker

SEED = 0


# ---------------------------------------------------------------------------------------------
# the experiment: store, model, prompts
# ---------------------------------------------------------------------------------------------


def open_store_experiment(path: str, overrides: list[str]) -> tuple[Any, Any]:
    ensure_repo_on_path()
    from retro_platform.cli.common import open_experiment

    return open_experiment(path, overrides)


def prepare_task(task: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """Ingest and index the experiment (what is stored is reused); the prompts; the model's
    configuration and where its weights come from."""
    import numpy as np

    from retro_platform.corpus.chunk_table import load_chunk_table, validation_documents
    from retro_platform.corpus.ingest import load_tokenizer
    from retro_platform.neighbours.retrieved import load_chunk_tokens
    from retro_platform.pipeline import ingest, run_index
    from retro_platform.store.models import Corpus

    experiment, store = open_store_experiment(task["experiment"], task["overrides"])
    started = time.perf_counter()
    ingested = ingest(experiment, store, progress=False)
    ingest_s = time.perf_counter() - started
    result = run_index(experiment, store, progress=False, log=log)
    index_s = time.perf_counter() - started - ingest_s
    m = experiment.retrieval.chunk_size
    with store.session() as session:
        corpus = session.get(Corpus, result.corpus_id)
        tokenizer = load_tokenizer(experiment, store, corpus)
        table = load_chunk_table(session, result.corpus_id)
        tokens = load_chunk_tokens(session, result.corpus_id, m, tokenizer.pad_id)
        held_out = validation_documents(
            session, result.corpus_id, experiment.retrieval.validation_fraction
        )
    documents = held_out if len(held_out) else np.unique(table.document_ids)
    prompts = []
    for document in documents:
        rows = np.flatnonzero(table.document_ids == document)
        rows = rows[np.argsort(table.positions[rows])]
        ids = tokens[rows].ravel()
        ids = ids[ids != tokenizer.pad_id]
        if len(ids) >= task["prompt_tokens"]:
            prompts.append([int(t) for t in ids[: task["prompt_tokens"]]])
        if len(prompts) == task["prompts"]:
            break
    if len(prompts) < task["prompts"]:
        raise ValueError(
            f"only {len(prompts)} documents hold {task['prompt_tokens']} tokens; "
            f"{task['prompts']} prompts are needed"
        )
    model, source = open_model(experiment, store, tokenizer)
    config = model.config
    return {
        "experiment": task["experiment"],
        "overrides": task["overrides"],
        "chunk_size": m,
        "neighbours": experiment.retrieval.neighbours,
        "embedder": experiment.plugin_table("embedder").name,
        "retriever": experiment.plugin_table("retriever").name,
        "chunks": len(table),
        "documents": int(len(np.unique(table.document_ids))),
        "held_out_documents": int(len(held_out)),
        "prompts_from": "held-out documents" if len(held_out) else "documents",
        "ingest_s": ingest_s,
        "index_s": index_s,
        "ingested": str(ingested)[:200],
        "vocab_size": tokenizer.vocab_size,
        "model_source": source,
        "model_config": {
            key: getattr(config, key)
            for key in (
                "dec_dim",
                "dec_depth",
                "dec_cross_attn_layers",
                "enc_dim",
                "enc_depth",
                "heads",
                "dim_head",
                "ff_mult",
                "max_seq_len",
                "chunk_size",
                "num_tokens",
                "positional_encoding",
            )
        },
        "params": sum(p.numel() for p in model.parameters()),
        "prompts": prompts,
        "prompt_text": tokenizer.decode(prompts[0]),
    }


def open_model(experiment: Any, store: Any, tokenizer: Any) -> tuple[Any, str]:
    """The trained model of the experiment when there is one (its run folder, else the
    newest ``<name>-*/checkpoint.pt`` under ``[train] output`` that matches the store), else a
    random-weight model of the same configuration seeded with :data:`SEED`; and which."""
    import torch

    from retro_platform.errors import ConfigError
    from retro_platform.runner.trained import open_trained_run
    from retro_platform.training.model_factory import build_model

    def quiet(_: str) -> None:
        return None

    candidates: list[Path | None] = [None]
    output = Path(experiment.train.output)
    found = output.glob(f"{experiment.experiment.name}-*/checkpoint.pt")
    candidates += sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    for checkpoint in candidates:
        try:
            run = open_trained_run(experiment, store, checkpoint=checkpoint, log=quiet)
        except ConfigError:
            continue
        state = "finished" if run.finished else "unfinished"
        return run.model, f"trained checkpoint {run.checkpoint} (step {run.step}, {state})"
    torch.manual_seed(SEED)
    model = build_model(experiment, tokenizer.vocab_size, tokenizer.pad_id).eval()
    return model, f"random weights (seed {SEED}): no trained checkpoint of this configuration"


# ---------------------------------------------------------------------------------------------
# timing the parts: wrappers around methods
# ---------------------------------------------------------------------------------------------


class Timers:
    """Seconds and calls per named part, from wrapped methods."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.counts: dict[str, int] = {}

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()
        self.counts.clear()

    def add(self, name: str, seconds: float, count: int = 0) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1
        self.counts[name] = self.counts.get(name, 0) + count

    def wrap(
        self,
        owner: Any,
        attribute: str,
        name: str | Callable[..., str],
        count: Callable[..., int] | None = None,
    ) -> None:
        """Replace ``owner.attribute`` (a bound method) by a timed call of it; ``name`` may
        depend on the call's arguments, ``count`` counts items (chunks) per call."""
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            label = name(*args, **kwargs) if callable(name) else name
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                items = count(*args, **kwargs) if count is not None else 0
                self.add(label, time.perf_counter() - started, items)

        object.__setattr__(owner, attribute, timed)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "seconds": self.seconds[name],
                "calls": self.calls[name],
                "count": self.counts.get(name, 0),
            }
            for name in self.seconds
        }


def instrument(model: Any, retrieval: Any, timers: Timers) -> None:
    """Time the model's encoder, CCA key projections and decode calls, and the retrieval's
    embedder, index search and neighbour tokens."""
    timers.wrap(
        model,
        "encode",
        "encoder",
        count=lambda neighbours, states: neighbours.shape[0] * neighbours.shape[1],
    )
    for layer in model.decoder:
        if layer.cross_attn is not None:
            timers.wrap(layer.cross_attn.attention, "context_keys", "cca keys")

    def decode_part(tokens: Any, cache: Any, retrieved: Any = None) -> str:
        if tokens.shape[1] == 1 and cache.length > 0:
            return "step"
        return "re-prefill" if "prefill" in timers.calls else "prefill"

    timers.wrap(model, "decode", decode_part, count=lambda tokens, *_, **__: tokens.shape[1])
    timers.wrap(model, "forward", "forward")
    if retrieval is not None:
        timers.wrap(retrieval.embedder, "embed", "embed", count=lambda texts: len(texts))
        timers.wrap(retrieval.retriever, "search", "search", count=lambda v, k: len(v))
        timers.wrap(retrieval, "neighbour_tokens", "neighbour tokens")


# ---------------------------------------------------------------------------------------------
# the ways of generating
# ---------------------------------------------------------------------------------------------


def recompute_generate(
    model: Any, prompt: list[int], retrieve: Any, new_tokens: int, pad_id: int
) -> list[int]:
    """Greedy generation as it was before the cache (``git show
    d633738^:retro_platform/evaluation/samples.py``, ``_generate_one``): each new token is a
    full forward pass over the chunk-aligned window that fits ``max_seq_len``, with the
    neighbours of every chunk completed inside it; a chunk is retrieved for when it completes
    (not when the very last token completes it)."""
    import numpy as np
    import torch

    m, max_len = model.chunk_size, model.max_seq_len
    tokens = list(prompt)
    neighbours: list[np.ndarray] = []  # (k, 2m) per completed chunk

    def retrieve_chunks(first: int, count: int) -> None:
        if retrieve is None:
            return
        chunks = np.asarray(tokens[first * m : (first + count) * m], dtype=np.int64)
        found = retrieve(chunks.reshape(count, m))
        neighbours.extend(found.tokens[u].astype(np.int64) for u in range(count))

    complete = len(tokens) // m
    if complete:
        retrieve_chunks(0, complete)
    generated = []
    for step in range(new_tokens):
        start = 0
        if len(tokens) > max_len:
            start = -(-(len(tokens) - max_len) // m) * m  # chunk-aligned window that fits
        window = torch.tensor(tokens[start:], dtype=torch.long)[None]
        done = len(neighbours) - start // m  # completed chunks inside the window
        retrieved = None
        if retrieve is not None and done > 0:
            retrieved = torch.from_numpy(np.stack(neighbours[start // m :]))[None]
        logits = model(window, retrieved, return_loss=False)[0, -1].float().clone()
        logits[pad_id] = -torch.inf
        token = int(logits.argmax())
        tokens.append(token)
        generated.append(token)
        if len(tokens) % m == 0 and step < new_tokens - 1:
            retrieve_chunks(len(tokens) // m - 1, 1)
    return generated


def gpt2_like(model: Any, n_positions: int) -> tuple[Any, dict[str, Any]]:
    """A random-weight ``GPT2LMHeadModel`` of our decoder's width (``n_embd = dec_dim``), depth,
    heads, feed-forward width (``n_inner = ff_mult * dec_dim``, exact GELU as ours) and
    vocabulary; no dropout. Its head width is ``dec_dim / heads``: where our ``dim_head *
    heads`` differs from ``dec_dim`` the attention widths differ (reported)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    config = GPT2Config(
        vocab_size=c.num_tokens,
        n_positions=n_positions,
        n_embd=c.dec_dim,
        n_layer=c.dec_depth,
        n_head=c.heads,
        n_inner=c.ff_mult * c.dec_dim,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=c.num_tokens - 1,
        eos_token_id=c.num_tokens - 1,
        pad_token_id=c.pad_id,
    )
    torch.manual_seed(SEED)
    gpt2 = GPT2LMHeadModel(config).eval()
    facts = {
        "n_embd": c.dec_dim,
        "n_layer": c.dec_depth,
        "n_head": c.heads,
        "head_dim": c.dec_dim // c.heads,
        "ours_dim_head": c.dim_head,
        "attention_width_matches": c.dim_head * c.heads == c.dec_dim,
        "n_inner": c.ff_mult * c.dec_dim,
        "vocab_size": c.num_tokens,
        "n_positions": n_positions,
        "attn_implementation": getattr(gpt2.config, "_attn_implementation", None),
        "params": sum(p.numel() for p in gpt2.parameters()),
    }
    return gpt2, facts


def gpt2_generate(gpt2: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
        out = gpt2.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=gpt2.config.pad_token_id,
        )
    return out[:, ids.shape[1] :].tolist()


def gpt2_loop(gpt2: Any, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy decoding by hand: one forward over the prompt, then one token at a time with
    ``past_key_values``."""
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    generated = []
    with torch.inference_mode():
        out = gpt2(ids, use_cache=True)
        for _ in range(new_tokens):
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
            generated.append(token)
            if len(generated) == new_tokens:
                break
            out = gpt2(token, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(generated, dim=1).tolist()


# ---------------------------------------------------------------------------------------------
# the compare task
# ---------------------------------------------------------------------------------------------


def compare_task(task: dict[str, Any], worker: Worker) -> dict[str, Any]:
    """Time every variant of ``task["variants"]`` ``task["repeats"]`` times after a warm-up,
    alternating; each variant's generated tokens, times and parts."""
    import torch

    from retro_platform.corpus.ingest import find_corpus_id, load_tokenizer
    from retro_platform.generation import RunRetrieval, SamplingSettings, generate
    from retro_platform.store.models import Corpus

    torch.set_num_threads(task["threads"])
    seed_everything(SEED)
    experiment, store = open_store_experiment(task["experiment"], task["overrides"])
    with store.session() as session:
        corpus = session.get(Corpus, find_corpus_id(experiment, store))
        tokenizer = load_tokenizer(experiment, store, corpus)
    model, source = open_model(experiment, store, tokenizer)
    model.eval()
    pad_id = tokenizer.pad_id
    variants = task["variants"]
    retrieval = None
    if any(v["retrieval"] for v in variants):
        retrieval = RunRetrieval(experiment, store, tokenizer=tokenizer)
        _ = retrieval.chunk_data  # read once, before any timing
    timers = Timers()
    instrument(model, retrieval, timers)
    prompts_all = task["prompts"]
    longest = max(v["new_tokens"] for v in variants) + len(prompts_all[0])
    gpt2 = gpt2_facts = None
    if any(v["impl"].startswith("gpt2") for v in variants):
        gpt2, gpt2_facts = gpt2_like(model, longest)

    def timed_retrieve(chunks: Any) -> Any:
        started = time.perf_counter()
        try:
            return retrieval(chunks)
        finally:
            timers.add("retrieval", time.perf_counter() - started, len(chunks))

    def run(variant: dict[str, Any], new_tokens: int) -> list[list[int]]:
        prompts = prompts_all[: variant["batch"]]
        retrieve = timed_retrieve if variant["retrieval"] else None
        impl = variant["impl"]
        if impl == "cached":
            settings = SamplingSettings(max_tokens=new_tokens)
            rows = generate(model, prompts, retrieve, settings, pad_id=pad_id)
            return [row.generated_ids for row in rows]
        if impl == "recompute":
            with torch.inference_mode():
                return [
                    recompute_generate(model, prompt, retrieve, new_tokens, pad_id)
                    for prompt in prompts
                ]
        if impl == "gpt2-generate":
            return gpt2_generate(gpt2, prompts, new_tokens)
        if impl == "gpt2-loop":
            return gpt2_loop(gpt2, prompts, new_tokens)
        raise ValueError(f"unknown variant {impl!r}")

    results: list[dict[str, Any]] = [
        {**variant, "times_s": [], "parts": [], "tokens": None, "deterministic": True}
        for variant in variants
    ]
    for variant in variants:  # warm-up: allocations, the embedder's first call, caches
        run(variant, min(task["warmup_tokens"], variant["new_tokens"]))
    # Opening a Faiss index sets OpenMP's thread count to every core (the retriever plugins'
    # configure_threads), torch's included: set it back to the task's.
    threads_after_open = torch.get_num_threads()
    torch.set_num_threads(task["threads"])
    for repeat in range(task["repeats"]):
        order = list(range(len(variants)))
        order = order[repeat % len(order) :] + order[: repeat % len(order)]  # rotate
        for i in order:
            variant, result = variants[i], results[i]
            gc.collect()
            timers.reset()
            started = time.perf_counter()
            tokens = run(variant, variant["new_tokens"])
            result["times_s"].append(time.perf_counter() - started)
            if torch.get_num_threads() != task["threads"]:
                raise RuntimeError(f"torch threads changed to {torch.get_num_threads()}")
            result["parts"].append(timers.snapshot())
            if result["tokens"] is None:
                result["tokens"] = tokens
            elif tokens != result["tokens"]:
                result["deterministic"] = False
        log(
            f"  repeat {repeat + 1}/{task['repeats']}: "
            + ", ".join(
                f"{v['name']} {r['times_s'][-1]:.2f} s"
                for v, r in zip(variants, results, strict=True)
            )
        )
    for result in results:
        seconds = median(result["times_s"])
        new = result["new_tokens"] * result["batch"]
        result["median_s"] = seconds
        result["tokens_per_s"] = new / seconds if seconds else None
        result["parts_median"] = median_parts(result["parts"])
    return {
        "model_source": source,
        "chunk_size": model.chunk_size,
        "max_seq_len": model.max_seq_len,
        "threads": torch.get_num_threads(),
        "threads_after_opening_the_index": threads_after_open,
        "gpt2": gpt2_facts,
        "variants": results,
    }


def median_parts(parts: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Each part's median seconds over the repeats, with its calls and counts (the same in
    every repeat of a deterministic generation: the first repeat's)."""
    names = {name for one in parts for name in one}
    merged = {}
    for name in sorted(names):
        seconds = [one.get(name, {}).get("seconds", 0.0) for one in parts]
        first = next(one[name] for one in parts if name in one)
        merged[name] = {
            "seconds": median(seconds),
            "calls": first["calls"],
            "count": first["count"],
        }
    return merged


WORKER_TASKS = {"prepare": prepare_task, "compare": compare_task}

"""``retro-platform generate``: continue a prompt with a trained run, retrieving as it goes, and
show the sources every chunk was conditioned on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from retro_platform.cli.common import (
    exclude_document_option,
    experiment_argument,
    open_experiment,
    set_option,
)
from retro_platform.cli.group import cli
from retro_platform.errors import ConfigError


@cli.command()
@experiment_argument
@click.argument("prompt", required=False)
@click.option(
    "--prompt-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read the prompt from this file ('-': standard input).",
)
@click.option("--run-id", help="The MLflow run to generate with (default: the file's run).")
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint file to generate with, trained from EXPERIMENT.toml's store.",
)
@click.option("--max-tokens", default=128, show_default=True, help="New tokens at most.")
@click.option(
    "--temperature", default=0.0, show_default=True, help="0: greedy; higher: more varied."
)
@click.option("--top-k", default=0, show_default=True, help="Sample among the k likeliest; 0: all.")
@click.option(
    "--top-p",
    default=1.0,
    show_default=True,
    help="Sample from the smallest set of tokens holding this much probability (nucleus); 1: all.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling.")
@click.option("--stop", multiple=True, help="End at this text (left out; repeatable).")
@click.option(
    "--retrieval/--no-retrieval",
    default=True,
    show_default=True,
    help="Retrieve for each completed chunk (a model trained without retrieval never does).",
)
@exclude_document_option("to see what the model does without the text it would copy")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no streaming.")
@set_option
def generate(
    experiment_file: str,
    prompt: str | None,
    prompt_file: Path | None,
    run_id: str | None,
    checkpoint: Path | None,
    max_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    stop: tuple[str, ...],
    retrieval: bool,
    exclude_documents: tuple[str, ...],
    as_json: bool,
    overrides: tuple[str, ...],
) -> None:
    """Continue PROMPT with the trained run of EXPERIMENT.toml.

    The prompt is the argument, --prompt-file, or standard input. Each time a chunk of the text
    completes, its neighbours are retrieved from the run's store and index (which may have
    gained or lost documents since training: nothing is retrained); the tokens stream as they
    are made, then the neighbours every chunk retrieved are listed with their documents and
    scores.
    """
    from retro_platform.generation import (
        RunRetrieval,
        SamplingSettings,
        check_prompts,
        generate_samples,
    )
    from retro_platform.runner.steps import choose_device
    from retro_platform.runner.trained import describe, open_trained_run

    if exclude_documents and not retrieval:
        raise ConfigError("--exclude-document needs retrieval on: drop --no-retrieval")
    text = _read_prompt(prompt, prompt_file)
    settings = SamplingSettings(
        max_tokens=max_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=stop,
    )
    experiment, store = open_experiment(experiment_file, overrides, read_only=True)
    status = _status(as_json)
    run = open_trained_run(experiment, store, run_id=run_id, checkpoint=checkpoint, log=status)
    device = choose_device(experiment)  # [train] device
    run.model.to(device)
    status(describe(run))
    if exclude_documents and not run.retrieval:
        raise ConfigError(
            "--exclude-document needs retrieval on, and this run's model was trained without it"
        )
    prompt_ids = run.tokenizer.encode(text).ids.tolist()
    check_prompts(run.model, [prompt_ids], run.tokenizer.pad_id)  # before retrieval loads
    retrieve = None
    if run.retrieval and retrieval:
        retrieve = RunRetrieval(
            experiment, store, tokenizer=run.tokenizer, exclude_documents=exclude_documents
        )
    if experiment.train.threads:  # after the index: opening one sets OpenMP to every core
        import torch

        torch.set_num_threads(experiment.train.threads)
    if retrieve is not None:  # load the embedder and the chunk tokens before the clock starts
        started = time.perf_counter()
        retrieve.warm_up()
        status(f"retrieval ready in {time.perf_counter() - started:.1f} s")

    stream = None if as_json else _TextStream(run.tokenizer.decode, stop)
    started = time.perf_counter()
    [sample] = generate_samples(
        run.model,
        [prompt_ids],
        retrieve,
        settings,
        pad_id=run.tokenizer.pad_id,
        decode=run.tokenizer.decode,
        describe=None if retrieve is None else retrieve.described,
        on_token=None if stream is None else stream.add,
        device=device,
    )
    seconds = time.perf_counter() - started
    if as_json:
        record = sample.as_json() | {
            "checkpoint": str(run.checkpoint),
            "step": run.step,
            "retrieval": retrieve is not None,
            "chunk_size": experiment.retrieval.chunk_size,
            "seconds": round(seconds, 3),
        }
        click.echo(json.dumps(record, indent=2, ensure_ascii=False))
        return
    stream.finish(sample.text)
    tokens = len(sample.generated_ids)
    status(f"{tokens} tokens in {seconds:.2f} s ({tokens / max(seconds, 1e-9):.1f} tokens/s)")
    click.echo(_sources(sample, experiment.retrieval.chunk_size, retrieve is not None))


def _read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt is not None and prompt_file is not None:
        raise ConfigError("give the prompt as an argument or with --prompt-file, not both")
    if prompt_file is not None:
        if str(prompt_file) == "-":
            prompt = _read_stdin()
        else:
            try:
                prompt = prompt_file.read_text(encoding="utf-8-sig")  # a BOM is no text
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"cannot read --prompt-file {prompt_file}: {error}") from None
    elif prompt is None:
        if sys.stdin is not None and sys.stdin.isatty():
            raise ConfigError("no prompt: give it as an argument, with --prompt-file, or on stdin")
        prompt = _read_stdin()
    # the same rule for every source: whitespace alone is no prompt
    if not prompt.strip():
        raise ConfigError("the prompt is empty; give some text to continue")
    return prompt


def _read_stdin() -> str:
    """Standard input as UTF-8, strictly, as a --prompt-file is read (the text layer would let
    other bytes through as surrogates, which the tokenizer turns into other text)."""
    if sys.stdin is None:  # started with stdin closed
        raise ConfigError(
            "no prompt: standard input is closed; give it as an argument or with --prompt-file"
        )
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ConfigError(f"cannot read the prompt from standard input: {error}") from None


def _status(quiet: bool):
    def log(message: str) -> None:
        click.echo(message, err=True)

    return log if not quiet else (lambda message: None)


class _TextStream:
    """Prints a row's new text as its tokens come. Text that may still turn out to be the start
    of a stop string, or an unfinished UTF-8 character, waits for the next token."""

    def __init__(self, decode: Any, stop: tuple[str, ...]) -> None:
        self.decode, self.stop, self.ids, self.shown = decode, stop, [], 0
        self.hold = max((len(s) for s in stop), default=1) - 1

    def add(self, row: int, token: int) -> None:
        self.ids.append(token)
        text = self.decode(self.ids)
        # the token that completes a stop string comes here before generation ends: never
        # show the stop string itself
        ready = min([len(text) - self.hold] + [text.find(s) for s in self.stop if s in text])
        while ready > self.shown and text[ready - 1] == "\ufffd":
            ready -= 1
        if ready > self.shown:
            click.echo(text[self.shown : ready], nl=False)
            self.shown = ready

    def finish(self, final: str) -> None:
        click.echo(final[self.shown :])


def _sources(sample: Any, m: int, retrieval: bool) -> str:
    """Each retrieval: the chunk it was made for, the tokens it conditions, its neighbours."""
    if not retrieval:
        return "\nSources: none (retrieval off)"
    if not sample.retrievals:
        return f"\nSources: none (no chunk of {m} tokens was completed)"
    lines = ["", "Sources (the neighbours of each completed chunk; they condition the next one):"]
    for r in sample.retrievals:
        where = "prompt" if r.in_prompt else "generated"
        lines.append(
            f"chunk {r.chunk} ({where}, tokens {r.chunk * m}-{(r.chunk + 1) * m - 1}): "
            f"{' '.join(r.query.split())[:70]!r}"
        )
        if not r.neighbours:
            lines.append("    (nothing found)")
        for rank, n in enumerate(r.neighbours, 1):
            lines.append(
                f"  {rank}. score {n.score:.4f}  {n.document}  chunk {n.position}  (id {n.chunk_id})"
            )
            lines.append("     " + " ".join((n.text or "").split())[:100])
    return "\n".join(lines)

"""``retro-platform validate``: check an experiment file without running anything."""

from __future__ import annotations

import click

from retro_platform.cli.common import experiment_argument, set_option
from retro_platform.cli.group import cli
from retro_platform.config import Experiment, load_experiment
from retro_platform.config.experiment import PLUGIN_TABLES


@cli.command()
@experiment_argument
@set_option
def validate(experiment_file: str, overrides: tuple[str, ...]) -> None:
    """Check EXPERIMENT.toml as `run` would before any work, and do nothing else.

    Checks every table and key, each plugin's options, the rules between tables (a sequence
    length that is a multiple of the chunk size, cross-attention layers within the depth, a
    positional encoding that accepts its options, ...), every point of a [sweep], and that the
    corpus can be read (its path exists, its packages are installed). Opens no store and
    writes nothing. Prints a summary, or one error line and exits with code 2.
    """
    from retro_platform.config.sweep import check_experiment
    from retro_platform.corpus.ingest import check_corpora

    experiment = load_experiment(experiment_file, overrides)
    points = check_experiment(experiment)
    check_corpora([point.experiment for point in points])
    for line in summary(experiment, len(points)):
        click.echo(line)


def summary(experiment: Experiment, points: int) -> list[str]:
    """What a reader wants to know about a valid file, in a few lines."""
    plugins = ", ".join(f"{table} {experiment.plugin_table(table).name}" for table in PLUGIN_TABLES)
    model, train, retrieval = experiment.model, experiment.train, experiment.retrieval
    lines = [
        f"{experiment.source}: valid",
        f"experiment {experiment.experiment.name!r}, seed {experiment.experiment.seed}",
        f"plugins: {plugins}, positional encoding {model.positional_encoding}",
        f"model: {_parameters(experiment)}; decoder {model.dec_depth} x {model.dec_dim}, "
        f"encoder {model.enc_depth} x {model.enc_dim}, cross-attention at "
        f"{list(model.dec_cross_attn_layers)}",
        f"training: {train.steps} steps of {train.batch_size * train.grad_accumulation} x "
        f"{train.seq_len} tokens, chunks of {retrieval.chunk_size}, "
        + (
            f"{retrieval.neighbours} {train.neighbours} neighbours a chunk"
            if train.retrieval
            else "no neighbours (RETRO[off])"
        )
        + (
            f", on {train.document_fraction:g} of the documents not held out"
            if train.document_fraction < 1
            else ""
        ),
    ]
    grid = experiment.sweep.grid
    if grid:
        axes = ", ".join(f"{key} ({len(values)})" for key, values in grid.items())
        lines.append(f"sweep: {points} points over {axes}")
    else:
        lines.append("sweep: none (1 run)")
    return lines


def _parameters(experiment: Experiment) -> str:
    """The model's parameter count, from a model built on the meta device (no memory)."""
    from retro_platform.config.rules import build_meta_model

    vocabulary = _vocabulary(experiment)
    model = build_meta_model(experiment, num_tokens=vocabulary or 2)
    count = sum(parameter.numel() for parameter in model.parameters())
    if vocabulary is None:
        per_token = 2 * experiment.model.dec_dim + 1  # an embedding row, a logit row, a bias
        count -= 2 * per_token
        return f"{_millions(count)} parameters plus {per_token} per vocabulary token"
    return f"{_millions(count)} parameters (vocabulary {vocabulary})"


def _vocabulary(experiment: Experiment) -> int | None:
    """The tokenizer's vocabulary size when it is known without the store: a built-in
    tokenizer with a fixed vocabulary, or one that trains to its ``vocab_size`` option."""
    from retro_platform.plugins import DISTRIBUTION

    tokenizer = experiment.plugin_table("tokenizer")
    registration = tokenizer.registration
    if getattr(registration.factory, "needs_training", False):
        size = tokenizer.options.get("vocab_size")
        return size if isinstance(size, int) else None
    if registration.distribution != DISTRIBUTION:
        return None  # a third party's tokenizer may be slow to build: do not guess
    return tokenizer.build().vocab_size


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 10_000 else str(count)

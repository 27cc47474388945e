"""A trained run, opened for generation: its model, the store's tokenizer, and whether it
retrieves.

Three ways to name it: the experiment file alone (its run folder, found as ``run`` finds it),
an MLflow run id (the run folder under ``[train] output`` that holds it), or a checkpoint file
with the experiment file it was trained from. Each is checked against the store before any
token is made: the tokenizer, vocabulary, padding id and chunk size must be the model's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retro_platform.config import Experiment
from retro_platform.config.resolved import flatten_config, resolved_config
from retro_platform.config.sweep import sweep_points
from retro_platform.corpus.ingest import corpus_fingerprint, find_corpus_id, load_tokenizer
from retro_platform.corpus.signature import tokenizer_signature
from retro_platform.errors import ConfigError
from retro_platform.model.retro import RETRO
from retro_platform.protocols import Tokenizer
from retro_platform.runner.folder import DONE, run_folder
from retro_platform.store.models import Corpus
from retro_platform.tracking.run import RUN_ID_FILE
from retro_platform.training.checkpoint import checkpoint_path, load_checkpoint


@dataclass
class TrainedRun:
    """A model ready to generate, and where it came from."""

    model: RETRO
    tokenizer: Tokenizer
    checkpoint: Path
    step: int
    #: whether it was trained with neighbours (``[train] neighbours`` not "none")
    retrieval: bool
    finished: bool


def open_trained_run(
    experiment: Experiment,
    store: Any,
    *,
    run_id: str | None = None,
    checkpoint: Path | None = None,
    log: Callable[[str], None] = print,
) -> TrainedRun:
    """The trained model of ``experiment`` (see the module docstring).

    Raises:
        ConfigError: no such run or checkpoint, or one that does not match the store.
    """
    if run_id is not None and checkpoint is not None:
        raise ConfigError("give --run-id or --checkpoint, not both")
    if checkpoint is None:
        run_dir = _run_folder_of(experiment, run_id)
        checkpoint = checkpoint_path(run_dir)
        if not checkpoint.exists():
            raise ConfigError(
                f"run folder {run_dir} has no checkpoint yet; run: retro-platform run "
                f"{experiment.hint_file}"
            )
        finished = (run_dir / DONE).exists()
    else:
        finished = True
        if not Path(checkpoint).is_file():
            raise ConfigError(f"--checkpoint {checkpoint} is not a file")
    state = load_checkpoint(checkpoint)  # CheckpointError: one line
    if not finished:
        log(f"the run has not finished: generating from its checkpoint at step {state['step']}")

    with store.session() as session:
        corpus = session.get(Corpus, find_corpus_id(experiment, store))
        tokenizer = load_tokenizer(experiment, store, corpus)
    _check_matches(state, experiment, tokenizer, checkpoint)
    model = RETRO(**state["model_config"])
    model.load_state_dict(state["model"])
    settings = state.get("settings", {})
    return TrainedRun(
        model=model.eval(),
        tokenizer=tokenizer,
        checkpoint=Path(checkpoint),
        step=int(state["step"]),
        retrieval=settings.get("train.neighbours", "retrieved") != "none",
        finished=finished,
    )


def _run_folder_of(experiment: Experiment, run_id: str | None) -> Path:
    output = experiment.train.output
    if run_id is not None:
        for candidate in sorted(output.glob(f"*/{RUN_ID_FILE}")):
            if candidate.read_text(encoding="utf-8").strip() == run_id:
                return candidate.parent
        raise ConfigError(
            f"no run folder under {output} holds MLflow run {run_id}: check the id "
            f"(retro-platform runs {experiment.hint_file} lists them) or pass --checkpoint PATH"
        )
    points = sweep_points(experiment)
    if len(points) > 1:
        raise ConfigError(
            f"{experiment.hint_file} is a sweep of {len(points)} points; name one with "
            "--run-id (retro-platform runs lists them) or --set its keys"
        )
    point = points[0].experiment
    run_dir = run_folder(point, flatten_config(resolved_config(point)))
    if not run_dir.exists():
        raise ConfigError(
            f"{experiment.hint_file} has no trained run (no folder {run_dir}); run: "
            f"retro-platform run {experiment.hint_file}"
        )
    return run_dir


def _check_matches(
    state: dict[str, Any], experiment: Experiment, tokenizer: Tokenizer, path: Path
) -> None:
    """The checkpoint's model reads the store's tokens: same tokenizer, vocabulary, padding and
    chunk size (and, where the checkpoint records them, the same corpus and tokenizer)."""
    config, origin = state.get("model_config", {}), state.get("origin") or {}
    problems = []
    if origin.get("corpus") not in (None, corpus_fingerprint(experiment)):
        problems.append("it was trained on another corpus (reader, tokenizer or chunk size)")
    if origin.get("tokenizer") not in (None, tokenizer_signature(tokenizer)):
        problems.append("the store's tokenizer cuts text differently from the one it learned")
    for what, mine, theirs in (
        ("vocabulary", tokenizer.vocab_size, config.get("num_tokens")),
        ("padding id", tokenizer.pad_id, config.get("pad_id")),
        ("chunk size", experiment.retrieval.chunk_size, config.get("chunk_size")),
    ):
        if mine != theirs:
            problems.append(f"its {what} is {theirs}, the store's {mine}")
    if problems:
        raise ConfigError(
            f"checkpoint {path} does not match the store of {experiment.hint_file}: "
            f"{problems[0]}; use the experiment file it was trained with"
        )


def describe(run: TrainedRun) -> str:
    """One line about the model, for the terminal."""
    parameters = sum(p.numel() for p in run.model.parameters())
    state = "finished" if run.finished else "unfinished"
    retrieval = "retrieval on" if run.retrieval else "trained without retrieval"
    return (
        f"model: {run.checkpoint} ({state}, step {run.step}, {parameters / 1e6:.1f}M "
        f"parameters, {retrieval})"
    )

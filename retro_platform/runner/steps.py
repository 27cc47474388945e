"""The steps of one run after the retrieval stages: prepare, train, evaluate, sample, log.

Each takes what the previous one made and the MLflow run to log to; none knows about sweeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retro_platform.config import Experiment
from retro_platform.corpus.ingest import corpus_fingerprint, load_tokenizer
from retro_platform.corpus.signature import tokenizer_signature
from retro_platform.errors import ConfigError
from retro_platform.evaluation import evaluate
from retro_platform.evaluation.chunk_figures import ChunkFigures
from retro_platform.evaluation.leakage import leakage_table, plot_leakage, write_leakage_csv
from retro_platform.generation import (
    RunRetrieval,
    SamplingSettings,
    ShuffledRetrieval,
    generate_samples,
    samples_markdown,
)
from retro_platform.generation.retrieval import ChunkData
from retro_platform.progress import progress as progress_bar
from retro_platform.runner.folder import CHUNK_FIGURES, LEAKAGE_CSV
from retro_platform.store.models import Corpus
from retro_platform.tracking.listing import BPB_METRIC, BPB_OFF_METRIC
from retro_platform.training.distributed import SINGLE, Processes
from retro_platform.training.model_factory import build_model
from retro_platform.training.sequences import load_sequence_data
from retro_platform.training.trainer import train


@dataclass
class Prepared:
    """What training and evaluation share: the corpus's tokenizer, its sequences, the model."""

    tokenizer: Any
    data: Any  # retro_platform.training.sequences.SequenceData
    model: Any  # retro_platform.model.RETRO
    device: torch.device


def choose_device(experiment: Experiment, processes: Processes = SINGLE) -> torch.device:
    """Where to train; on CUDA under ``torchrun``, this process's GPU (its local rank)."""
    wanted = experiment.train.device
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ConfigError('[train] device = "cuda" but torch sees no GPU; use "auto" or "cpu"')
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted == "cuda" and processes.distributed:
        return torch.device("cuda", processes.local_rank)
    return torch.device(wanted)


def prepare_training(
    experiment: Experiment,
    store: Any,
    index: Any,
    log: Callable[[str], None] = print,
    processes: Processes = SINGLE,
) -> Prepared:
    """Load the tokenizer and the sequences, and build the model (seeded)."""
    with store.session() as session:
        corpus = session.get(Corpus, index.corpus_id)
        tokenizer = load_tokenizer(experiment, store, corpus)
    data = load_sequence_data(experiment, store, index, tokenizer)
    log(data.describe())
    if len(data.windows("val")) == 0:  # found now, not after the training
        raise ConfigError(
            "no document is held out for validation; raise [retrieval] validation_fraction"
        )
    torch.manual_seed(experiment.experiment.seed)
    model = build_model(experiment, tokenizer.vocab_size, tokenizer.pad_id)
    return Prepared(tokenizer, data, model, choose_device(experiment, processes))


def train_model(
    experiment: Experiment,
    prepared: Prepared,
    run: Any,
    run_dir: Path,
    *,
    on_eval: Callable[[int], None] | None = None,
    progress: bool | None = None,
    processes: Processes = SINGLE,
) -> Any:
    """Train (or resume) with every logged metric sent to the MLflow run (None: a process
    other than 0 under ``torchrun``, which logs nothing)."""
    return train(
        prepared.model,
        prepared.data,
        experiment,
        run_dir=run_dir,
        device=prepared.device,
        on_log=None if run is None else run.log_metrics,
        on_eval=on_eval,
        progress=progress,
        origin=checkpoint_origin(experiment, prepared.tokenizer),
        processes=processes,
    )


def checkpoint_origin(experiment: Experiment, tokenizer: Any) -> dict[str, str]:
    """What a checkpoint records about its data, for generation to check a store against."""
    return {
        "corpus": corpus_fingerprint(experiment),
        "tokenizer": tokenizer_signature(tokenizer),
    }


def finite(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics MLflow can store (it refuses NaN and infinities in some back ends)."""
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def validate(
    experiment: Experiment,
    prepared: Prepared,
    *,
    counted: bool = False,
    progress: bool | None = None,
) -> Any:
    """Validation loss and bpb of the model as it is now (retrieval on, and off when asked);
    ``counted``: with a progress bar (not during training, whose bar it would break)."""
    retrieval = experiment.train.retrieval
    batches = prepared.data.batches("val", experiment.eval.batch_size, retrieval=retrieval)
    if counted:
        batches = _counted(batches, prepared, progress)
    on_cuda = prepared.device.type == "cuda"
    return evaluate(
        prepared.model,
        batches,
        device=prepared.device,
        retrieval_off=retrieval and experiment.eval.retrieval_off,
        autocast=torch.bfloat16 if on_cuda and experiment.train.precision != "fp32" else None,
    )


def _counted(batches: Iterator[Any], prepared: Prepared, enabled: bool | None) -> Iterator[Any]:
    """``batches``, counted by a progress bar in validation sequences."""
    data = prepared.data
    total = len(data.windows("val").order[: data.eval_sequences])
    with progress_bar(total=total, desc="evaluate", unit="sequence", enabled=enabled) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch.tokens))


def validation_metrics(result: Any) -> dict[str, float]:
    """A validation's MLflow metrics. A run trained with retrieval off measures only that."""
    metrics = {"val/loss": result.loss, BPB_METRIC: result.bpb}
    if result.loss_off is not None:
        metrics |= {"val/loss_retrieval_off": result.loss_off, BPB_OFF_METRIC: result.bpb_off}
    return finite(metrics)


def evaluate_and_log(
    experiment: Experiment,
    store: Any,
    index: Any,
    prepared: Prepared,
    run: Any,
    run_dir: Path,
    step: int,
    log: Callable[[str], None] = print,
    progress: bool | None = None,
) -> dict[str, float]:
    """The final evaluation, its per-chunk figures, the leakage table and plot, and sample
    generations, all logged."""
    result = validate(experiment, prepared, counted=True, progress=progress)
    metrics = validation_metrics(result)
    run.log_metrics(step, metrics)
    figures = ChunkFigures.of(result).save(run_dir / CHUNK_FIGURES)
    run.log_artifact(figures, CHUNK_FIGURES.parent.as_posix())
    log(
        f"validation: loss {result.loss:.4f}, bpb {result.bpb:.4f}"
        + ("" if result.bpb_off is None else f", bpb with retrieval off {result.bpb_off:.4f}")
    )
    if result.chunk_overlap is not None and result.chunk_loss_off is not None:
        log_leakage(experiment, result, run, run_dir)
    if experiment.generate.samples:
        log_samples(experiment, store, index, prepared, run, progress=progress)
    return metrics


def log_leakage(experiment: Experiment, result: Any, run: Any, run_dir: Path) -> None:
    """The paper's leakage analysis: bpb by how much a chunk overlaps its neighbours."""
    rows = leakage_table(result, experiment.eval.leakage_buckets)
    table = run_dir / LEAKAGE_CSV
    folder = LEAKAGE_CSV.parent.as_posix()
    run.log_artifact(write_leakage_csv(rows, table), folder)
    run.log_artifact(plot_leakage(rows, table.with_suffix(".png")), folder)


def log_samples(
    experiment: Experiment,
    store: Any,
    index: Any,
    prepared: Prepared,
    run: Any,
    progress: bool | None = None,
) -> None:
    """Sample generations with autoretrieval, and the documents each chunk retrieved."""
    settings = experiment.generate
    prompts = [prepared.tokenizer.encode(text).ids.tolist() for text in settings.prompts]
    if not prompts:  # the starts of validation documents, which the model never trained on
        batch = next(prepared.data.batches("val", settings.samples, retrieval=False), None)
        if batch is None:
            return
        pad = prepared.tokenizer.pad_id
        for row in batch.tokens[:, : settings.prompt_tokens].tolist():
            prompts.append([token for token in row if token != pad])
    prompts = [ids for ids in prompts[: settings.samples] if ids]
    retrieve = None
    if experiment.train.retrieval:
        data = prepared.data
        retrieve = RunRetrieval(
            experiment,
            store,
            index=index.index,
            tokenizer=prepared.tokenizer,
            chunk_data=ChunkData(data.table, data.chunk_tokens, data.stream),
        )
    if experiment.train.neighbours == "shuffled":  # as in its training: random database chunks
        rng = np.random.default_rng([experiment.experiment.seed, 1])
        retrieve = ShuffledRetrieval(retrieve, prepared.data.database_rows, rng)
    sampling = SamplingSettings(
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        seed=experiment.experiment.seed,
    )
    bar = progress_bar(
        total=len(prompts) * settings.max_tokens, desc="samples", unit="token", enabled=progress
    )
    with bar:
        samples = generate_samples(
            prepared.model,
            prompts,
            retrieve,
            sampling,
            pad_id=prepared.tokenizer.pad_id,
            decode=prepared.tokenizer.decode,
            describe=None if retrieve is None else retrieve.described,
            device=prepared.device,
            on_token=lambda row, token: bar.update(1),
        )
    run.log_text(samples_markdown(samples), "samples.md")

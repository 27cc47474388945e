"""The training loop: AdamW steps over the loader's batches, logged, checkpointed, resumable.

The step itself (forward, backward, clipping, the optimizer) is
:func:`~retro_platform.training.step.train_step`; this module is what runs around it.

A run lives in one folder (``run_dir``). When it holds a checkpoint the run resumes from it:
weights, optimizer, schedule, random generators and the data position (a step number: batch
``s`` is a pure function of the seed and ``s``), so a run killed at any moment and started
again ends with the same weights as one never interrupted (on the CPU, where torch's kernels
are deterministic for a given thread count).

Under ``torchrun`` (``processes``, :mod:`~retro_platform.training.distributed`) every process
runs this loop on its slice of each batch, with the model in DistributedDataParallel. Process 0
alone prints, calls ``on_log`` and ``on_eval`` and writes the checkpoint, while the others wait
for it at an evaluation; the logged loss and tokens/s are those of the whole batches, summed
over the processes. Every process reads the checkpoint when it starts, so the run folder must
be one that they all see. The checkpoint holds no process count: a run resumes with any.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from retro_platform.config import Experiment
from retro_platform.errors import ConfigError
from retro_platform.model.retro import RETRO
from retro_platform.progress import note, use_bar
from retro_platform.progress import progress as progress_bar
from retro_platform.training import distributed
from retro_platform.training.checkpoint import (
    check_compatible,
    checkpoint_path,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from retro_platform.training.distributed import SINGLE, Processes
from retro_platform.training.optim import build_optimizer, build_scheduler
from retro_platform.training.sequences import SequenceData
from retro_platform.training.step import StepOptions, TrainState, train_step

#: ``on_log(step, metrics)``: the training metrics every ``[train] log_every`` steps.
LogCallback = Callable[[int, dict[str, float]], None]
#: ``on_eval(step)``: run a validation every ``[eval] every`` steps.
EvalCallback = Callable[[int], None]


@dataclass(frozen=True)
class TrainResult:
    """What one call of :func:`train` did."""

    step: int  # optimizer steps done in all, resumed ones included
    start_step: int  # where this call started: 0, or the step of the checkpoint it resumed
    finished: bool  # step == [train] steps
    checkpoint: Path | None  # the run's latest checkpoint (None when none was written yet)
    tokens: int  # tokens (targets, padding excluded) trained on in this call, by every process
    seconds: float  # wall time of this call's training steps
    loader_share: float  # share of that time spent building batches
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged metrics

    @property
    def resumed(self) -> bool:
        return self.start_step > 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def run_settings(experiment: Experiment, data: SequenceData, device: torch.device) -> dict:
    """What a run's trajectory depends on besides the model: a checkpoint made under other
    settings cannot be resumed to the same result, so it is refused."""
    train = experiment.train
    keys = ("steps", "batch_size", "grad_accumulation", "seq_len", "lr", "min_lr_ratio",
            "warmup_steps", "weight_decay", "betas", "grad_clip", "neighbours", "retrofit",
            "cross_documents", "document_fraction")  # fmt: skip
    settings: dict[str, Any] = {f"train.{key}": getattr(train, key) for key in keys}
    settings["train.retrofit_from"] = (
        None if train.retrofit_from is None else str(train.retrofit_from)
    )
    settings["train.precision"] = "bf16" if _bf16(experiment, device) else "fp32"
    settings["experiment.seed"] = experiment.experiment.seed
    settings["retrieval.neighbours"] = experiment.retrieval.neighbours
    settings["retrieval.exclude_same_document"] = experiment.retrieval.exclude_same_document
    settings["data.train_sequences"] = len(data.train)
    return settings


def train(
    model: RETRO,
    data: SequenceData,
    experiment: Experiment,
    *,
    run_dir: str | Path,
    device: str | torch.device,
    on_log: LogCallback | None = None,
    on_eval: EvalCallback | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    origin: dict[str, str] | None = None,
    processes: Processes = SINGLE,
) -> TrainResult:
    """Train ``model`` for ``[train] steps`` optimizer steps, resuming from ``run_dir``.

    The loop around :func:`~retro_platform.training.step.train_step`: it feeds the step its
    micro-batches and does everything else a run does (timing, log lines or a progress bar,
    the callbacks, checkpoints).

    Args:
        model: built by :func:`~retro_platform.training.model_factory.build_model` after
            seeding torch with ``[experiment] seed`` (the caller's part of determinism).
        device: where to train (``"cpu"``, ``"cuda"``, ...).
        on_log: called every ``[train] log_every`` steps and at the last one with
            ``train/loss`` (mean since the last call), ``train/lr``, ``train/tokens_per_s``,
            ``train/grad_norm`` (before clipping) and ``train/loader_share``.
        on_eval: called every ``[eval] every`` steps (when > 0) after that step, with the
            model's weights current; its random draws do not change the training.
        progress: a progress bar (True), plain log lines on stderr (False), or a bar only when
            stderr is a terminal (None): :mod:`retro_platform.progress`. The lines are the
            metrics every ``log_every`` steps, and a progress line when those are 30 s apart.
        stop_after: end once this many steps are done, without a final checkpoint, as a
            killed run would (for tests).
        origin: what the checkpoint records about the data it was trained on (the corpus and
            the tokenizer's signature), checked by generation, never by a resume.
        processes: this process's place under ``torchrun``, joined by
            :func:`~retro_platform.training.distributed.start` (on CUDA, ``device`` is this
            process's GPU); the default is one process.
    """
    train_cfg = experiment.train
    distributed.check_batch_size(train_cfg.batch_size, processes.world_size)
    threads = distributed.threads_per_process(processes, train_cfg.threads)
    if threads:  # [train] threads, or under torchrun this process's share of the cores
        torch.set_num_threads(threads)
    device = torch.device(device)
    path = checkpoint_path(Path(run_dir))
    settings = run_settings(experiment, data, device)
    state, previous = _start(model, experiment, settings, path, device)
    resumed = previous is not None
    saved_window = (previous or {}).get("log_window")
    main = processes.is_main
    if processes.distributed:
        state.wrapped = _wrap(model, processes, device, unused=not train_cfg.retrieval)
    start_step, steps = state.step, train_cfg.steps
    end = steps if stop_after is None else min(steps, stop_after)

    accumulation = train_cfg.grad_accumulation
    stream = data.batches(
        "train",
        train_cfg.batch_size,
        seed=experiment.experiment.seed,
        start_step=state.step * accumulation,  # the loader counts forward passes
        retrieval=train_cfg.retrieval,
        part=(processes.rank, processes.world_size),
    )
    options = StepOptions(
        device, train_cfg.grad_clip, _bf16(experiment, device), processes.world_size
    )
    if main:
        bar = progress_bar(
            total=steps, initial=state.step, unit="step", desc="train", enabled=progress
        )
    else:  # process 0 shows the progress of all
        bar = tqdm(total=steps, initial=state.step, disable=True)
    lines = main and not use_bar(progress)
    meter = _Meter()
    if saved_window and saved_window["steps"] == state.step % train_cfg.log_every:
        # the steps since the last log before the checkpoint count in the next logged loss,
        # as in a run that was never stopped (the sum is every process's: process 0 holds it)
        meter.steps = saved_window["steps"]
        meter.loss = saved_window["loss"] if main else 0.0
    total = _Meter()
    # a resume with no step left (killed after the last checkpoint) still has the last ones
    metrics: dict[str, float] = dict((previous or {}).get("metrics", {}))
    saved = path if resumed else None

    with bar:
        while state.step < end:
            started = time.perf_counter()
            micro_batches = [next(stream) for _ in range(accumulation)]
            loader_s = time.perf_counter() - started
            totals = None
            if processes.distributed:
                # dropout differs between processes and depends on nothing but the step
                seed = distributed.step_seed(experiment.experiment.seed, state.step, processes.rank)
                torch.manual_seed(seed)
                counts = [batch.targets(model.pad_id) for batch in micro_batches]
                totals = distributed.sum_counts(processes, counts)
            done = train_step(state, micro_batches, options, token_totals=totals)
            elapsed = time.perf_counter() - started
            for m in (meter, total):
                m.add(done.loss, elapsed, loader_s, done.tokens)
            bar.update(1)

            step = state.step
            if step % train_cfg.log_every == 0 or step == steps:
                # every process takes part: the loss is summed over them
                metrics = meter.metrics(done.lr, float(done.grad_norm), processes)
                meter = _Meter()
                bar.set_postfix(
                    loss=f"{metrics['train/loss']:.4f}",
                    tok_s=f"{metrics['train/tokens_per_s']:,.0f}",
                )
                if lines:
                    note(bar, _log_line(step, steps, metrics, total))
                if on_log is not None and main:
                    on_log(step, metrics)
            if experiment.eval.every and step % experiment.eval.every == 0:
                if on_eval is not None and main:
                    generators = rng_state()  # whatever the evaluation draws, training is unchanged
                    on_eval(step)
                    restore_rng(generators)
                distributed.wait_for_main(processes)  # the others wait for process 0's evaluation
            if step % train_cfg.checkpoint_every == 0 or step == steps:
                (window_loss,) = distributed.sum_over_processes(processes, [float(meter.loss)])
                if main:
                    window = {"loss": window_loss, "steps": meter.steps}  # for the next log
                    extra = {"origin": origin or {}, "log_window": window, "metrics": metrics}
                    save_checkpoint(path, {**state.checkpoint(settings), **extra})
                saved = path

    return TrainResult(
        step=state.step,
        start_step=start_step,
        finished=state.step >= steps,
        checkpoint=saved,
        tokens=total.tokens,
        seconds=total.seconds,
        loader_share=total.loader_share,
        metrics=metrics,
    )


def _start(
    model: RETRO,
    experiment: Experiment,
    settings: dict[str, Any],
    path: Path,
    device: torch.device,
) -> tuple[TrainState, dict[str, Any] | None]:
    """The state to train from: the run's checkpoint at ``path`` when there is one, else
    fresh, with torch seeded so that dropout is a function of the seed alone; and the
    checkpoint it resumed from, if any."""
    saved = load_checkpoint(path) if path.exists() else None
    if experiment.train.retrofit:
        _retrofit(model, experiment, load_decoder=saved is None)
    model.to(device)
    optimizer = build_optimizer(model, experiment.train)
    state = TrainState(model, optimizer, build_scheduler(optimizer, experiment.train))
    if saved is None:
        torch.manual_seed(experiment.experiment.seed)
    else:
        check_compatible(saved, model.config.as_dict(), settings, path)
        state.restore(saved)
    return state, saved


def _wrap(
    model: RETRO, processes: Processes, device: torch.device, *, unused: bool
) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (which makes every process start from process 0's
    weights). ``unused``: some trainable parameters get no gradient (the encoder and the
    cross-attention when training without neighbours), which DDP must be told."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


# ---------------------------------------------------------------------------------------------


class _Meter:
    """Sums over a stretch of steps (loss stays a tensor: no device sync per step)."""

    def __init__(self) -> None:
        self.loss: torch.Tensor | float = 0.0
        self.steps = 0
        self.seconds = 0.0
        self.loader_seconds = 0.0
        self.tokens = 0

    def add(self, loss: torch.Tensor, seconds: float, loader: float, tokens: int) -> None:
        self.loss = self.loss + loss
        self.steps += 1
        self.seconds += seconds
        self.loader_seconds += loader
        self.tokens += tokens

    @property
    def loader_share(self) -> float:
        return self.loader_seconds / self.seconds if self.seconds > 0 else 0.0

    def metrics(
        self, lr: float, grad_norm: float, processes: Processes = SINGLE
    ) -> dict[str, float]:
        """The stretch's metrics; under DDP each process holds its part of each step's loss
        (:class:`~retro_platform.training.step.StepMetrics`) and the sum is the loss, while
        the tokens are already every process's."""
        (loss,) = distributed.sum_over_processes(processes, [float(self.loss)])
        return {
            "train/loss": loss / max(self.steps, 1),
            "train/lr": lr,
            "train/tokens_per_s": self.tokens / self.seconds if self.seconds > 0 else 0.0,
            "train/grad_norm": grad_norm,
            "train/loader_share": self.loader_share,
        }


def _bf16(experiment: Experiment, device: torch.device) -> bool:
    precision = experiment.train.precision
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def _retrofit(model: RETRO, experiment: Experiment, *, load_decoder: bool) -> None:
    """Freeze the decoder; first load it from ``[train] retrofit_from`` for a fresh run (a
    resumed one gets every weight from its own checkpoint)."""
    source = experiment.train.retrofit_from
    decoder = None
    if source is not None and load_decoder:
        file = checkpoint_path(source) if Path(source).is_dir() else Path(source)
        decoder = load_checkpoint(file)["model"]
        own = model.state_dict()
        for name, tensor in decoder.items():
            if name in own and own[name].shape != tensor.shape:
                raise ConfigError(
                    f"[train] retrofit_from {file}: {name} is {tuple(tensor.shape)} there but "
                    f"{tuple(own[name].shape)} in this [model]; retrofit a decoder of the same "
                    "shape"
                )
    try:
        model.retrofit(decoder)
    except ValueError as error:
        raise ConfigError(f"[train] retrofit_from {source}: {error}") from None


def _log_line(step: int, steps: int, metrics: dict[str, float], total: _Meter) -> str:
    eta = (steps - step) * total.seconds / max(total.steps, 1)
    return (
        f"step {step}/{steps}  loss {metrics['train/loss']:.4f}  lr {metrics['train/lr']:.2e}  "
        f"{metrics['train/tokens_per_s']:,.0f} tokens/s  loader "
        f"{metrics['train/loader_share']:.1%}  eta {_duration(eta)}"
    )


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"

"""One optimisation step, apart from the loop that drives it.

The step does no I/O (no log line, no checkpoint, no progress bar) and reads no clock, so the
loop in :mod:`~retro_platform.training.trainer` owns what a run reports and saves. Under
``torchrun`` every process calls the same step on its slice of each batch, with the model
wrapped in DistributedDataParallel (``TrainState.wrapped``), which averages the gradients over
the processes in the last backward pass of the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from retro_platform.model.retro import RETRO
from retro_platform.training.batch import Batch
from retro_platform.training.checkpoint import FORMAT, restore_rng, rng_state


@dataclass
class TrainState:
    """What a step changes and a checkpoint keeps, so that a run can resume where it stopped.

    The random generators (torch's, numpy's, Python's) are the process's own, not fields:
    :meth:`checkpoint` takes their state with the rest and :meth:`restore` puts it back.
    """

    model: RETRO
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    step: int = 0  # optimizer steps done
    tokens: int = 0  # target tokens trained on (padding excluded), by every process
    #: under DDP: ``model`` inside DistributedDataParallel, which the step runs forward so
    #: that the backward pass averages the gradients over the processes; None: one process
    wrapped: torch.nn.Module | None = None

    def checkpoint(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What :func:`~retro_platform.training.checkpoint.save_checkpoint` writes; the model
        config and the run ``settings`` let a resume refuse a run of another shape."""
        return {
            "format": FORMAT,
            "step": self.step,
            "tokens": self.tokens,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            "model_config": self.model.config.as_dict(),
            "settings": settings,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Back to a :meth:`checkpoint` (checked compatible by the caller), generators too."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        restore_rng(saved["rng"])
        self.step, self.tokens = int(saved["step"]), int(saved["tokens"])


@dataclass(frozen=True)
class StepOptions:
    """How every step of a run computes: fixed for the run, as the trajectory depends on it."""

    device: torch.device  # where the model is; the step moves each batch there
    grad_clip: float  # the largest global gradient norm; 0: no clipping
    bf16: bool  # forward passes under bf16 autocast (the weights and the optimizer stay fp32)
    world_size: int = 1  # training processes (DDP), each on its slice of every batch


@dataclass(frozen=True)
class StepMetrics:
    """What one step did. Loss and norm stay tensors on the device: reading them is a sync,
    which the loop does only when it logs."""

    #: mean over the micro-batches, 0-dim; under DDP this process's part of it: the sum over
    #: the processes is the mean of the whole batches
    loss: torch.Tensor
    grad_norm: torch.Tensor  # global gradient norm before clipping, 0-dim
    lr: float  # the learning rate this step used
    tokens: int  # target tokens trained on (padding excluded), by every process


def train_step(
    state: TrainState,
    micro_batches: Sequence[Batch],
    options: StepOptions,
    *,
    token_totals: Sequence[int] | None = None,
) -> StepMetrics:
    """One optimizer step on ``micro_batches`` (``[train] grad_accumulation`` of them).

    Each micro-batch's loss is divided by their number before its backward pass, so the
    gradient is that of their mean loss, as one batch of them all would give. Neighbours are
    used when the batches carry them (``Batch.retrieved``), as the loader was told. Then the
    gradient is clipped, AdamW and the schedule step, and ``state.step`` and ``state.tokens``
    advance. Pass the batches on the host: their tokens are counted there, without waiting
    for the device.

    Under DDP (``options.world_size`` processes, ``state.wrapped`` set) pass
    ``token_totals``: the target tokens of each whole micro-batch, summed over the processes.
    The model's loss is a mean over the target tokens it is given, and the slices of one batch
    hold different numbers of them, so the mean of the processes' means is not the batch's
    mean. Each process's loss is weighted by its share of the tokens (times the number of
    processes, which DDP's average divides out): the averaged gradient is then exactly that of
    the whole micro-batch's mean loss, as one process would compute it. DDP all-reduces the
    gradients once per step, in the last micro-batch's backward pass.
    """
    if not micro_batches:
        raise ValueError("a step needs at least one micro-batch")
    if options.world_size > 1 and (state.wrapped is None or token_totals is None):
        raise ValueError("a step of several processes needs state.wrapped and token_totals")
    model = state.model
    forward = state.wrapped or model
    forward.train()  # an evaluation between steps may have left it in eval mode
    autocast = (
        torch.autocast(options.device.type, dtype=torch.bfloat16) if options.bf16 else nullcontext()
    )
    accumulation = len(micro_batches)
    tokens = 0
    loss_sum = torch.zeros((), device=options.device)
    for position, batch in enumerate(micro_batches):
        counted = batch.targets(model.pad_id)
        tokens += counted
        weight = 1.0
        if token_totals is not None:
            weight = counted / max(token_totals[position], 1)  # this process's share
        batch = batch.to(options.device)
        with ExitStack() as stack:
            if state.wrapped is not None and position < accumulation - 1:
                stack.enter_context(state.wrapped.no_sync())  # all-reduce once, at the end
            with autocast:
                loss = forward(batch.tokens, batch.retrieved, return_loss=True)
            if token_totals is None:
                (loss / accumulation).backward()
            else:
                (loss * (weight * options.world_size / accumulation)).backward()
        loss_sum += loss.detach() * weight
    if token_totals is not None:
        tokens = int(sum(token_totals))
    grad_norm = _clip([p for p in model.parameters() if p.requires_grad], options.grad_clip)
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens += tokens
    return StepMetrics(loss=loss_sum / accumulation, grad_norm=grad_norm, lr=lr, tokens=tokens)


def _clip(parameters: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """The global gradient norm before clipping; clipped to ``max_norm`` unless it is 0."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    grads = [p.grad for p in parameters if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())

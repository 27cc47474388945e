"""One optimisation step, apart from the loop that drives it.

The step does no I/O (no log line, no checkpoint, no progress bar) and reads no clock, so the
loop in :mod:`~retro_platform.training.trainer` owns what a run reports and saves, and a
distributed wrapper can call the same step in every process on that process's batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
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
    tokens: int = 0  # target tokens trained on (padding excluded)

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


@dataclass(frozen=True)
class StepMetrics:
    """What one step did. Loss and norm stay tensors on the device: reading them is a sync,
    which the loop does only when it logs."""

    loss: torch.Tensor  # mean over the micro-batches, 0-dim
    grad_norm: torch.Tensor  # global gradient norm before clipping, 0-dim
    lr: float  # the learning rate this step used
    tokens: int  # target tokens trained on (padding excluded)


def train_step(
    state: TrainState, micro_batches: Sequence[Batch], options: StepOptions
) -> StepMetrics:
    """One optimizer step on ``micro_batches`` (``[train] grad_accumulation`` of them).

    Each micro-batch's loss is divided by their number before its backward pass, so the
    gradient is that of their mean loss, as one batch of them all would give. Neighbours are
    used when the batches carry them (``Batch.retrieved``), as the loader was told. Then the
    gradient is clipped, AdamW and the schedule step, and ``state.step`` and ``state.tokens``
    advance. Pass the batches on the host: their tokens are counted there, without waiting
    for the device.
    """
    if not micro_batches:
        raise ValueError("a step needs at least one micro-batch")
    model = state.model
    model.train()  # an evaluation between steps may have left it in eval mode
    autocast = (
        torch.autocast(options.device.type, dtype=torch.bfloat16) if options.bf16 else nullcontext()
    )
    accumulation = len(micro_batches)
    tokens = 0
    loss_sum = torch.zeros((), device=options.device)
    for batch in micro_batches:
        tokens += int((batch.tokens[:, 1:] != model.pad_id).sum())  # the targets the loss uses
        batch = batch.to(options.device)
        with autocast:
            loss = model(batch.tokens, batch.retrieved, return_loss=True)
        (loss / accumulation).backward()
        loss_sum += loss.detach()
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

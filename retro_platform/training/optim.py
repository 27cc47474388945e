"""AdamW with weight decay only where it belongs, and the warm-up + cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from retro_platform.config.runner_tables import TrainTable


def decay_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the trainable parameters with and without weight decay.

    No decay on biases and norm gains (anything of fewer than two dimensions), on embedding
    tables (``nn.Embedding`` modules, or a parameter named like an embedding: decaying them
    shrinks rare tokens' vectors towards zero) and on norm modules of any kind.
    """
    exempt: set[str] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Embedding) or "norm" in type(module).__name__.lower():
            prefix = f"{module_name}." if module_name else ""
            exempt.update(prefix + name for name, _ in module.named_parameters(recurse=False))
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if parameter.ndim < 2 or name in exempt or "bias" in leaf or "emb" in leaf:
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, train: TrainTable) -> torch.optim.AdamW:
    """AdamW over the trainable parameters in two groups (decay, no decay)."""
    decay, no_decay = decay_groups(model)
    parameters = dict(model.named_parameters())
    groups = [
        {"params": [parameters[n] for n in names], "weight_decay": weight_decay}
        for names, weight_decay in ((decay, train.weight_decay), (no_decay, 0.0))
        if names
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas)


class WarmupCosine:
    """The learning-rate factor of optimizer step ``step`` (from 0): linear warm-up to 1 over
    ``warmup`` steps, then a cosine down to ``min_ratio`` at the last step.

    A plain object with plain attributes, so ``LambdaLR.state_dict()`` saves it as data.
    """

    def __init__(self, steps: int, warmup: int, min_ratio: float) -> None:
        self.steps, self.warmup, self.min_ratio = steps, warmup, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup  # the first step already learns a little
        span = self.steps - 1 - self.warmup
        progress = min(1.0, (step - self.warmup) / span) if span > 0 else 0.0
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainTable) -> LambdaLR:
    """The schedule of ``[train]``: step it once after every optimizer step."""
    factor = WarmupCosine(train.steps, train.warmup_steps, train.min_lr_ratio)
    return LambdaLR(optimizer, [factor] * len(optimizer.param_groups))


def lr_at(train: TrainTable, step: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0) under ``[train]``."""
    return train.lr * WarmupCosine(train.steps, train.warmup_steps, train.min_lr_ratio)(step)

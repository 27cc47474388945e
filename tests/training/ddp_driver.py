"""Run under ``torchrun`` by ``test_distributed.py``: a few DDP steps of ``train_step``, each
process on its slice of every batch, as the training loop runs them; process 0 saves what the
steps did (the summed losses, the gradient norms, the weights).

    python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_driver.py \
        EXPERIMENT.toml OUT.pt START_STEP STEPS

Twice from the same start: ``weighted`` as the training loop does it, then ``equal``, where
every process claims an equal share of each micro-batch's target tokens, as averaging the
processes' mean losses would (the control that shows the token weighting matters). Also
saved: the cores each process was pinned to.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from retro_platform.training import distributed
from retro_platform.training.optim import build_optimizer, build_scheduler
from retro_platform.training.step import StepOptions, TrainState, train_step
from tests.training.helpers import prepare


def main(path: str, out: str, start: int, steps: int) -> None:
    processes = distributed.start("cpu")
    torch.set_num_threads(1)
    if not processes.is_main:  # one process at a time opens the store, as the runner does
        distributed.wait_for_main(processes)
    s = prepare(Path(path))
    if processes.is_main:
        distributed.wait_for_main(processes)
    results = {mode: run(s, processes, start, steps, mode) for mode in ("weighted", "equal")}
    pinned = [None] * processes.world_size  # each process's cores, as start() pinned them
    torch.distributed.all_gather_object(pinned, (sorted(os.sched_getaffinity(0)), processes.cores))
    results["cores"] = pinned
    if processes.is_main:
        torch.save(results, out)
    distributed.stop(processes)


def run(s, processes: distributed.Processes, start: int, steps: int, mode: str) -> dict:
    train = s.experiment.train
    model = s.model()
    optimizer = build_optimizer(model, train)
    state = TrainState(model, optimizer, build_scheduler(optimizer, train))
    state.wrapped = torch.nn.parallel.DistributedDataParallel(model)
    options = StepOptions(torch.device("cpu"), train.grad_clip, False, processes.world_size)
    stream = s.data.batches(
        "train",
        train.batch_size,
        seed=s.experiment.experiment.seed,
        start_step=start * train.grad_accumulation,
        part=(processes.rank, processes.world_size),
    )
    losses, norms = [], []
    for _ in range(steps):
        batches = [next(stream) for _ in range(train.grad_accumulation)]
        counts = [batch.targets(model.pad_id) for batch in batches]
        if mode == "weighted":
            totals = distributed.sum_counts(processes, counts)
        else:
            totals = [count * processes.world_size for count in counts]
        done = train_step(state, batches, options, token_totals=totals)
        (loss,) = distributed.sum_over_processes(processes, [float(done.loss)])
        losses.append(loss)
        norms.append(float(done.grad_norm))
    return {"losses": losses, "norms": norms, "weights": model.state_dict()}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

"""Training under torchrun, piece by piece: each process's slice of a batch, its place and its
threads, and DDP steps in real processes (gloo on the CPU) against one process on the whole
batches. Whole runs (``run --nproc``, a kill and a resume with another number of processes)
are in ``tests/runner/test_distributed.py``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retro_platform.errors import ConfigError
from retro_platform.training.distributed import (
    SINGLE,
    Processes,
    check_batch_size,
    core_share,
    from_environment,
    step_seed,
    threads_per_process,
)
from retro_platform.training.optim import build_optimizer, build_scheduler
from retro_platform.training.step import StepOptions, TrainState, train_step
from tests.limits import HANG_S
from tests.training.helpers import prepare

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("ddp_driver.py")


def test_the_slices_of_the_processes_make_up_the_batch_of_one_process(setup) -> None:
    s = setup()
    seed = s.experiment.experiment.seed
    whole = next(s.data.batches("train", 6, seed=seed, start_step=9))
    parts = [
        next(s.data.batches("train", 6, seed=seed, start_step=9, part=(r, 3))) for r in range(3)
    ]
    for field in ("tokens", "retrieved", "chunk_rows", "neighbour_rows", "chunk_bytes"):
        joined = torch.cat([getattr(part, field) for part in parts])
        assert torch.equal(joined, getattr(whole, field)), field
    with pytest.raises(ValueError, match="slice 0 of 4"):
        next(s.data.batches("train", 6, seed=seed, part=(0, 4)))


def test_a_process_knows_its_place_and_its_share_of_the_cores() -> None:
    assert from_environment({}) == SINGLE and not SINGLE.distributed and SINGLE.is_main
    place = from_environment(
        {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    )
    assert place == Processes(rank=3, world_size=4, local_rank=1, local_world_size=2)
    assert place.distributed and not place.is_main
    cores = len(os.sched_getaffinity(0))
    assert threads_per_process(place, None) == max(1, cores // 2)  # this node's 2 processes
    assert threads_per_process(place, 3) == 3  # [train] threads wins
    assert threads_per_process(SINGLE, None) is None  # one process: torch's own choice
    crowded = Processes(rank=0, world_size=64, local_rank=0, local_world_size=64)
    assert threads_per_process(crowded, None) == 1
    pinned = Processes(rank=1, world_size=2, local_rank=1, local_world_size=2, cores=8)
    assert threads_per_process(pinned, None) == 8  # pinned: its share already


def test_the_processes_of_one_machine_get_disjoint_equal_shares_of_its_cores() -> None:
    cores = [0, 1, 2, 3, 4, 5, 6, 8, 9]  # 9 usable cores, not numbered 0..8
    shares = [core_share(cores, rank, 4) for rank in range(4)]
    assert shares == [[0, 1], [2, 3], [4, 5], [6, 8]]  # the remainder (9) serves no process
    assert core_share(cores, 0, 1) == cores
    assert core_share([0, 1], 2, 3) == [0, 1]  # fewer cores than processes: all of them


def test_a_batch_size_the_processes_cannot_share_is_refused_in_one_line() -> None:
    check_batch_size(6, 3)
    with pytest.raises(ConfigError) as refused:
        check_batch_size(4, 3)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("[train] batch_size (4) must divide by the number of training "
                              "processes (3)")  # fmt: skip


def test_each_process_draws_its_own_dropout_from_the_seed_and_step() -> None:
    seeds = {step_seed(7, step, rank) for step in range(3) for rank in range(2)}
    assert len(seeds) == 6 and step_seed(7, 1, 1) == step_seed(7, 1, 1)
    assert step_seed(8, 1, 1) not in seeds


def _reference(s, start: int, steps: int) -> dict:
    """One process on the whole batches, from step ``start``."""
    train = s.experiment.train
    model = s.model()
    optimizer = build_optimizer(model, train)
    state = TrainState(model, optimizer, build_scheduler(optimizer, train))
    options = StepOptions(torch.device("cpu"), train.grad_clip, False)
    stream = s.data.batches("train", train.batch_size, seed=s.experiment.experiment.seed,
                            start_step=start * train.grad_accumulation)  # fmt: skip
    losses, norms = [], []
    for _ in range(steps):
        done = train_step(state, [next(stream) for _ in range(train.grad_accumulation)], options)
        losses.append(float(done.loss))
        norms.append(float(done.grad_norm))
    return {"losses": losses, "norms": norms, "weights": model.state_dict()}


def _unequal_step(s) -> int:
    """The step among the first 200 whose micro-batches' halves differ most in target tokens
    (padded windows at documents' ends): there, a mean of the two processes' mean losses is
    not the batch's mean."""
    train = s.experiment.train
    seed = s.experiment.experiment.seed
    halves = [s.data.batches("train", train.batch_size, seed=seed, part=(r, 2)) for r in range(2)]
    imbalance = []
    for _ in range(200):
        counts = [[next(h).targets(s.tokenizer.pad_id) for h in halves]
                  for _ in range(train.grad_accumulation)]  # fmt: skip
        imbalance.append(max(abs(a - b) for a, b in counts))
    assert max(imbalance) > 0, "no batch of unequal halves"
    return imbalance.index(max(imbalance))


@pytest.mark.slow  # two processes under torchrun: about 10 s on 2 quiet cores
def test_ddp_steps_on_two_processes_equal_one_process_on_the_whole_batches(
    make_file, tmp_path: Path
) -> None:
    """Two processes, each on half of every micro-batch, DDP averaging their gradients, give
    one process's steps: losses to 1e-6 and gradient norms to 1e-5 (relative), weights after
    three AdamW steps to 2e-5 (under 1% of one step at lr 3e-3: AdamW divides by the root of
    each gradient's second moment, which magnifies a float difference where a gradient is
    near 0; measured 6e-6 at most). Only the order of float sums differs. The control weights
    each process's mean loss equally (what plain DDP averaging does): its gradients differ."""
    path = make_file(train={"batch_size": 4, "grad_accumulation": 2})
    s = prepare(path)
    start, steps = _unequal_step(s), 3
    one = _reference(s, start, steps)

    out = tmp_path / "ddp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(DRIVER), str(path), str(out), str(start), str(steps)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert done.returncode == 0, done.stderr[-3000:]
    results = torch.load(out, weights_only=True)

    two = results["weighted"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-6)
    assert two["norms"] == pytest.approx(one["norms"], rel=1e-5)
    for name, tensor in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], tensor, rtol=0, atol=2e-5, msg=name)
    # each process was pinned to its own half of the cores (all of them on a 1-core machine)
    cores = sorted(os.sched_getaffinity(0))
    (first, count), (second, count_too) = results["cores"]
    assert (first, second) == (core_share(cores, 0, 2), core_share(cores, 1, 2))
    assert count == len(first) and count_too == len(second)
    equal = results["equal"]
    assert equal["norms"][0] != pytest.approx(one["norms"][0], rel=1e-4)
    assert equal["losses"][0] != pytest.approx(one["losses"][0], rel=1e-5)

"""Several training processes under ``torchrun``: which process this is, and the few
collectives the training loop and the runner need besides DistributedDataParallel's own.

``torchrun`` starts the processes and tells each one its place through environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and the rendezvous address);
:func:`start` reads them and joins the process group: NCCL when the run trains on CUDA, gloo on
the CPU. Without those variables (a plain ``retro-platform run``) it is one process and every
function here does nothing.

Two groups, two jobs:

- the *default* group (NCCL or gloo, torch's default timeout) carries DDP's gradient
  all-reduce, so a collective that hangs is reported in minutes;
- a *host* group (gloo, :data:`WAIT_TIMEOUT`) carries small CPU values (token counts, a loss
  to log) without a device sync, and the waits while process 0 works alone: the retrieval
  stages before training, an evaluation, the final evaluation and samples after it. Those can
  take hours on a large corpus, far past the default timeout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from retro_platform.errors import ConfigError

#: How long the other processes wait for process 0's solo work (ingest, embedding, index and
#: neighbours, an evaluation, the samples) before giving up.
WAIT_TIMEOUT = timedelta(days=7)

_host_group: dist.ProcessGroup | None = None


@dataclass(frozen=True)
class Processes:
    """This process's place among the training processes (one process: the defaults)."""

    rank: int = 0  # 0 ... world_size - 1; process 0 logs, checkpoints and evaluates
    world_size: int = 1  # processes in all, on every node
    local_rank: int = 0  # on this node: the GPU it trains on
    local_world_size: int = 1  # processes on this node, which share its CPU cores
    backend: str | None = None  # "nccl" or "gloo" once the group is joined; None: one process
    cores: int | None = None  # on the CPU: the cores this process was pinned to (:func:`start`)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


#: A plain run: one process.
SINGLE = Processes()


def from_environment(environ: Mapping[str, str] | None = None) -> Processes:
    """This process's place as ``torchrun`` set it in the environment (not joined yet)."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return SINGLE
    world = int(environ["WORLD_SIZE"])
    return Processes(
        rank=int(environ.get("RANK", 0)),
        world_size=world,
        local_rank=int(environ.get("LOCAL_RANK", 0)),
        local_world_size=int(environ.get("LOCAL_WORLD_SIZE", world)),
    )


def check_batch_size(batch_size: int, world_size: int, where: str = "[train] batch_size") -> None:
    """Every process takes an equal, contiguous slice of every batch.

    Raises:
        ConfigError: ``batch_size`` does not divide by ``world_size``.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"{where} ({batch_size}) must divide by the number of training processes "
            f"({world_size}), each of which takes an equal slice of every batch; choose a "
            f"batch_size that is a multiple of {world_size}, or another number of processes"
        )


def threads_per_process(processes: Processes, configured: int | None) -> int | None:
    """Torch CPU threads for this process: ``[train] threads`` when set, else this node's
    cores shared out among its processes (at least one each); None: torch's own choice."""
    if configured:
        return configured
    if not processes.distributed:
        return None
    if processes.cores:  # already its share: pinned to it
        return processes.cores
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // processes.local_world_size)


def core_share(cores: list[int], local_rank: int, local_world_size: int) -> list[int]:
    """The cores of ``cores`` that process ``local_rank`` of ``local_world_size`` on one
    machine gets: equal, disjoint, consecutive shares (the remainder left out, so that no core
    serves two processes); all of them when there are fewer cores than processes."""
    share = len(cores) // local_world_size
    if share == 0:
        return list(cores)
    return sorted(cores)[local_rank * share : (local_rank + 1) * share]


def _pin_to_share(place: Processes) -> int | None:
    """On the CPU, pin this process to its share of the machine's cores, and return how many.

    Every process runs the sharded retrieval stages at once, and a plugin sizes its work to the
    cores it may use (the MiniLM embedder starts a worker per core, up to 4): pinned, N
    processes on one machine use its cores once instead of N times over."""
    if place.local_world_size < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cores = core_share(sorted(os.sched_getaffinity(0)), place.local_rank, place.local_world_size)
    os.sched_setaffinity(0, cores)
    return len(cores)


def start(device_type: str) -> Processes:
    """Join the training processes that ``torchrun`` started (nothing to join when it did not):
    on CUDA, set the process's GPU; on the CPU, pin the process to its share of the cores;
    join the default group (NCCL on CUDA, gloo on the CPU) and the host group."""
    global _host_group
    place = from_environment()
    if not place.distributed:
        return place
    backend = "nccl" if device_type == "cuda" else "gloo"
    cores = None
    if device_type == "cuda":
        torch.cuda.set_device(place.local_rank)
    else:
        cores = _pin_to_share(place)
    if not dist.is_initialized():
        dist.init_process_group(backend)  # env://: the rendezvous torchrun set up
    _host_group = dist.new_group(backend="gloo", timeout=WAIT_TIMEOUT)
    return replace(place, backend=backend, cores=cores)


def stop(processes: Processes) -> None:
    """Leave the process group (after the last collective)."""
    global _host_group
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()
    _host_group = None


def wait_for_main(processes: Processes) -> None:
    """A barrier on the host group: every process waits here until all arrive, process 0
    after its solo work."""
    if processes.distributed:
        dist.barrier(group=_host_group)


def sum_over_processes(processes: Processes, values: Sequence[float | int]) -> list[float]:
    """``values`` summed element-wise over every process (host memory, no device sync)."""
    if not processes.distributed:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_host_group)
    return tensor.tolist()


def sum_counts(processes: Processes, counts: Sequence[int]) -> list[int]:
    """Integer ``counts`` summed element-wise over every process, exactly."""
    if not processes.distributed:
        return [int(c) for c in counts]
    tensor = torch.tensor(counts, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=_host_group)
    return tensor.tolist()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of process ``rank`` before optimizer step ``step`` (from 0).

    Under DDP each process draws its dropout masks for its own slice of the batch; seeding
    every step from ``(seed, step, rank)`` makes them differ between processes and makes the
    run a function of the seed and the number of processes, however often it was resumed.
    """
    return int(np.random.SeedSequence([seed % 2**64, step, rank]).generate_state(1, np.uint64)[0])

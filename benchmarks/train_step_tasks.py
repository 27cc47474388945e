"""What one worker of the training-step benchmark measures: its tasks, the models, inputs and
steps they run, and the encoder / CCA time split."""

from __future__ import annotations

import functools
import gc
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    CPU_ATTENTION_FLOPS,
    cpu_model,
    current_rss_bytes,
    ensure_repo_on_path,
    load_reference_retro,
    seed_everything,
)
from _tasks import PROGRESS, Worker, limit_address_space
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

LEARNING_RATE = 1e-4
SEED = 0
CHUNK_SIZE = 64
NEIGHBOURS = 2
NEIGHBOUR_LEN = 128

#: Fraction of --timeout-s a worker plans to use, leaving room for start-up and reporting.
TIME_BUDGET_FRACTION = 0.85


@dataclass
class Task:
    """One unit of work for a fresh worker process; JSON in, JSON out.

    ``kind`` is ``machine`` (versions and the matmul rate), ``time`` (timed steps and peak
    memory), ``flops`` (FlopCounterMode, once) or ``profile`` (encoder / CCA split, ours).
    """

    kind: str
    impl: str = "ours"
    model: dict[str, Any] = field(default_factory=dict)
    batch: int = 1
    seq_len: int = CHUNK_SIZE
    retrieval: bool = True
    mode: str = "train"
    checkpoint: bool = False
    system_malloc: bool = False  # True: leave glibc's malloc as it is (the allocator rows)
    repeats: int = 3
    seed: int = SEED


# ---------------------------------------------------------------------------------------------
# the tasks: what one worker measures
# ---------------------------------------------------------------------------------------------


def worker_task(
    measure: Callable[[Task, Worker], dict[str, Any]],
) -> Callable[[dict[str, Any], Worker], dict[str, Any]]:
    """A task of this benchmark, in its worker: every core, and freed memory kept, as
    retro-platform's training commands do for both models, unless the task asks for glibc's
    malloc or checkpoints activations (memory over speed; see cpu_allocator.py)."""

    @functools.wraps(measure)
    def run(payload: dict[str, Any], worker: Worker) -> dict[str, Any]:
        task = Task(**payload)
        torch.set_num_threads(os.cpu_count() or 1)
        PROGRESS["malloc_kept"] = False
        if not task.system_malloc and not task.checkpoint:
            ensure_repo_on_path()
            from retro_platform.cpu_allocator import keep_freed_memory

            PROGRESS["malloc_kept"] = keep_freed_memory()
        return measure(task, worker)

    return run


@worker_task
def machine_task(task: Task, _worker: Worker) -> dict[str, Any]:
    """Versions, threads, CPU, and this machine's fp32 matmul rate (median per size)."""
    rates = {}
    for size, repeats in ((2048, 10), (4096, 3)):
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        rates[str(size)] = 2 * size**3 / statistics.median(times)
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "load_average_1min": os.getloadavg()[0],
        "matmul_flops_per_s": rates,
    }


@worker_task
def time_task(task: Task, worker: Worker) -> dict[str, Any]:
    """Median seconds per step after one warm-up, the baseline and peak RSS.

    The repeats shrink to what fits in the time budget after the warm-up; with no time left
    the warm-up alone is reported (``repeats_done`` 0).
    """
    model = build_model(task)
    seq, retrieved = make_inputs(task)
    step = make_step(task, model, seq, retrieved)
    torch.mm(torch.ones(64, 64), torch.ones(64, 64))  # start the thread pool before the cap
    gc.collect()
    PROGRESS.update(baseline_rss=current_rss_bytes(), params=parameter_count(model))
    limit_address_space(worker.mem_limit_bytes)

    warm_up = timed(step)
    remaining = worker.seconds_left(TIME_BUDGET_FRACTION)
    repeats = max(0, min(task.repeats, int(remaining // warm_up)))
    times = [timed(step) for _ in range(repeats)] if repeats > 0 else [warm_up]
    return {"times_s": times, "warm_up_s": warm_up, "repeats_done": repeats}


def timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


@worker_task
def flops_task(task: Task, _worker: Worker) -> dict[str, Any]:
    """Model FLOPs of one step, by one convention for both implementations.

    Forward (+ backward for training) as a plain implementation computes it: every matmul,
    attention over the full score matrix, nothing recomputed. So checkpointing is off and so is
    dropout, which changes no matmul but decides which attention kernel runs (a fused or
    blockwise kernel may skip or recompute blocks). The optimizer's elementwise work is not
    counted. On the meta device where the model allows it (no memory, no time); a model that
    reads a tensor's value (``bool(mask.all())``) is run on the CPU instead.
    """
    no_dropout = {
        key: (0.0 if key.endswith("dropout") else value) for key, value in task.model.items()
    }
    task = replace(task, checkpoint=False, model=no_dropout)
    try:
        return {"flops": count_flops(task, "meta"), "flops_device": "meta"}
    except Exception as meta_error:
        flops = count_flops(task, "cpu")
        reason = str(meta_error).splitlines()[0]
        return {"flops": flops, "flops_device": "cpu", "detail": f"not on meta: {reason}"}


def count_flops(task: Task, device: str) -> int:
    with torch.device(device):
        model = build_model(task)
    seq, retrieved = make_inputs(task, device)
    neighbours = retrieved if task.retrieval else None
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        if task.mode == "forward":
            model.eval()
            with torch.no_grad():
                model(seq[:, :-1], neighbours)
        else:
            model.train()
            training_loss(model, seq, neighbours).backward()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# models, inputs, steps
# ---------------------------------------------------------------------------------------------


def build_model(task: Task) -> nn.Module:
    """Our RETRO or the reference's, on the current default device, seeded."""
    kwargs = dict(task.model)
    kwargs["dec_cross_attn_layers"] = tuple(kwargs["dec_cross_attn_layers"])
    seed_everything(task.seed)
    if task.impl == "reference":
        return load_reference_retro()(**kwargs)
    ensure_repo_on_path()
    from retro_platform import RETRO

    return RETRO(**kwargs, checkpoint_activations=task.checkpoint)


def make_inputs(task: Task, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """Token ids in [1, num_tokens): ``seq`` (b, n + 1) and ``retrieved`` (b, n/64, 2, 128)."""
    generator = torch.Generator().manual_seed(task.seed + 1)
    num_tokens = task.model["num_tokens"]
    seq = torch.randint(1, num_tokens, (task.batch, task.seq_len + 1), generator=generator)
    retrieved_shape = (task.batch, task.seq_len // CHUNK_SIZE, NEIGHBOURS, NEIGHBOUR_LEN)
    retrieved = torch.randint(1, num_tokens, retrieved_shape, generator=generator)
    return seq.to(device), retrieved.to(device)


def training_loss(model: nn.Module, seq: Tensor, retrieved: Tensor | None) -> Tensor:
    """The language-modelling loss. Ours computes it with retrieval on or off; the reference
    returns only logits with retrieval off, so the benchmark takes their cross-entropy."""
    if retrieved is not None or hasattr(model, "retrofit"):  # ours takes retrieved=None too
        return model(seq, retrieved, return_loss=True)
    logits = model(seq[:, :-1], None)
    return F.cross_entropy(logits.flatten(0, 1), seq[:, 1:].flatten())


def make_step(task: Task, model: nn.Module, seq: Tensor, retrieved: Tensor) -> Callable[[], None]:
    """One training step (forward, backward, AdamW) or one eval forward pass under no_grad."""
    neighbours = retrieved if task.retrieval else None
    if task.mode == "forward":

        def forward_pass() -> None:
            model.eval()
            with torch.no_grad():
                model(seq[:, :-1], neighbours)

        return forward_pass

    # the same optimizer for both implementations; fused, because PyTorch's default CPU AdamW
    # loops over parameters one at a time (10x slower here) and would blur the model comparison
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=True)

    def training_step() -> None:
        model.train()
        training_loss(model, seq, neighbours).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return training_step


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


# ---------------------------------------------------------------------------------------------
# where the time goes: encoder and CCA
# ---------------------------------------------------------------------------------------------


def find_profiled_modules(
    model: nn.Module,
) -> tuple[dict[str, list[tuple[str, nn.Module]]], list[str]]:
    """The encoder's modules and the chunked-cross-attention modules, with notes on what failed.

    Encoder: the model's top-level children named ``encoder*`` (``encoder``, ``encoder_norm``,
    ...); a container (``nn.ModuleList``) is never called, so its elements are hooked instead.
    CCA: modules whose class is named ``ChunkedCrossAttention``.
    """
    notes = []
    groups: dict[str, list[tuple[str, nn.Module]]] = {}
    encoder: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if not name.startswith("encoder"):
            continue
        if isinstance(child, (nn.ModuleList, nn.ModuleDict)):
            encoder += [(f"{name}.{index}", module) for index, module in child.named_children()]
        else:
            encoder.append((name, child))
    if encoder:
        groups["encoder"] = encoder
    else:
        notes.append("no `encoder*` modules on the model: encoder time not measured")

    cca = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ == "ChunkedCrossAttention"
    ]
    if cca:
        groups["cca"] = cca
    else:
        notes.append("no ChunkedCrossAttention modules found: CCA time not measured")
    return groups, notes


class ModuleClock:
    """Accumulates wall time inside groups of modules with forward and backward hooks.

    Backward time is the span between a module's backward pre-hook (gradients of its outputs
    ready) and its backward hook (gradients of its inputs ready): on CPU autograd runs on one
    thread, so this is close to the module's own backward.
    """

    def __init__(self, groups: dict[str, list[tuple[str, nn.Module]]], backward: bool) -> None:
        self.totals: dict[str, float] = {}
        self._starts: dict[tuple[int, str], float] = {}
        self._handles: list[Any] = []
        for group, modules in groups.items():
            for _, module in modules:
                self._attach(group, module, backward)

    def _attach(self, group: str, module: nn.Module, backward: bool) -> None:
        key = id(module)

        def start(phase: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                self._starts[(key, phase)] = time.perf_counter()

            return hook

        def stop(phase: str) -> Callable[..., None]:
            def hook(*_: Any) -> None:
                begun = self._starts.pop((key, phase), None)
                if begun is not None:
                    bucket = f"{group}_{phase}"
                    self.totals[bucket] = self.totals.get(bucket, 0.0) + time.perf_counter() - begun

            return hook

        self._handles.append(module.register_forward_pre_hook(start("fwd")))
        self._handles.append(module.register_forward_hook(stop("fwd")))
        if backward:
            self._handles.append(module.register_full_backward_pre_hook(start("bwd")))
            self._handles.append(module.register_full_backward_hook(stop("bwd")))

    def take(self) -> dict[str, float]:
        """The totals since the last call, and reset."""
        totals, self.totals = self.totals, {}
        return totals

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@worker_task
def profile_task(task: Task, worker: Worker) -> dict[str, Any]:
    """Per-step encoder and CCA time (forward and backward) for a training step and a forward."""
    model = build_model(task)
    seq, retrieved = make_inputs(task)
    groups, notes = find_profiled_modules(model)
    names = {group: [name for name, _ in modules] for group, modules in groups.items()}
    steps = {
        mode: make_step(replace(task, mode=mode), model, seq, retrieved)
        for mode in ("train", "forward")
    }
    clock = ModuleClock(groups, backward=True)
    warm_up_start = time.perf_counter()
    try:
        steps["train"]()  # warm-up, and a check that the backward hooks work with this model
    except RuntimeError as error:
        notes.append(f"backward hooks failed ({error}); backward split not measured")
        clock.remove()
        clock = ModuleClock(groups, backward=False)
        steps["train"]()
    steps["forward"]()  # warm-up of the eval path
    clock.take()
    per_repeat = time.perf_counter() - warm_up_start
    remaining = worker.seconds_left(TIME_BUDGET_FRACTION)
    repeats = max(1, min(task.repeats, int(remaining // per_repeat)))
    result: dict[str, Any] = {"modules": names, "notes": notes}
    for mode, step in steps.items():
        result[mode] = [timed_with_split(step, clock) for _ in range(repeats)]
    return result


def timed_with_split(step: Callable[[], None], clock: ModuleClock) -> dict[str, float]:
    seconds = timed(step)
    return {"step": seconds, **clock.take()}


#: What ``--worker`` runs, by the task's kind.
WORKER_TASKS = {
    "machine": machine_task,
    "time": time_task,
    "flops": flops_task,
    "profile": profile_task,
}

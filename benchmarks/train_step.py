"""Training-step and forward-pass benchmark: our RETRO against retro-pytorch 0.3.9, in one run.

    python benchmarks/train_step.py [--quick] [--configs small,seed,scaling] [--repeats N]
                                    [--json out.json] [--mem-limit-gb 16] [--timeout-s 600]

Every measurement (one implementation, one configuration, one pass) is a task that
``_tasks.TaskRunner`` runs in a fresh process of this script, so that its peak RSS is its own;
the worker's memory guard and an address-space limit turn "more memory than allowed" into a table
entry instead of a machine brought to its knees, and a timeout does the same for time. FLOPs are
counted once per model and configuration with ``torch.utils.flop_counter``, in tasks of their own
(on the meta device where the model allows it). See ``benchmarks/README.md``.

The script reads top-down: the configurations and options, what is run, the tasks (what one
worker measures), the tables.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    CPU_ATTENTION_FLOPS,
    cpu_model,
    current_rss_bytes,
    ensure_repo_on_path,
    fmt_number,
    fmt_percent,
    fmt_ratio,
    fmt_seconds,
    format_bytes,
    load_reference_retro,
    log,
    markdown_table,
    seed_everything,
)
from _tasks import (
    PROGRESS,
    TaskRunner,
    Worker,
    add_worker_arguments,
    limit_address_space,
    serve,
)
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

LEARNING_RATE = 1e-4
SEED = 0
CHUNK_SIZE = 64
NEIGHBOURS = 2
NEIGHBOUR_LEN = 128

#: Fraction of --timeout-s a worker plans to use, leaving room for start-up and reporting.
TIME_BUDGET_FRACTION = 0.85


# ---------------------------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------------------------

SMALL_MODEL: dict[str, Any] = {
    "num_tokens": 30522,
    "max_seq_len": 512,
    "enc_dim": 384,
    "enc_depth": 2,
    "dec_dim": 384,
    "dec_depth": 6,
    "dec_cross_attn_layers": (3, 6),
    "heads": 6,
    "dim_head": 64,
}

#: The seed README's usage example, dropout included.
SEED_MODEL: dict[str, Any] = {
    "num_tokens": 20000,
    "max_seq_len": 2048,
    "enc_dim": 896,
    "enc_depth": 2,
    "dec_depth": 12,
    "dec_cross_attn_layers": (1, 3, 6, 9),
    "heads": 8,
    "dec_dim": 796,
    "dim_head": 64,
    "dec_attn_dropout": 0.25,
    "dec_ff_dropout": 0.25,
}

#: --quick: the same shapes of model, tiny, to smoke-test the harness in seconds.
QUICK_SMALL_MODEL: dict[str, Any] = {
    **SMALL_MODEL,
    "num_tokens": 1000,
    "max_seq_len": 128,
    "enc_dim": 64,
    "enc_depth": 1,
    "dec_dim": 64,
    "dec_depth": 2,
    "dec_cross_attn_layers": (2,),
    "heads": 2,
    "dim_head": 32,
}
QUICK_SEED_MODEL: dict[str, Any] = {
    **QUICK_SMALL_MODEL,
    "dec_cross_attn_layers": (1, 2),
    "dec_attn_dropout": 0.25,
    "dec_ff_dropout": 0.25,
}


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: the model's keyword arguments and the input shape."""

    name: str
    model: dict[str, Any]
    batch: int
    seq_len: int


def configurations(quick: bool) -> dict[str, Shape]:
    """The small and seed configurations (full-size, or tiny with --quick)."""
    if quick:
        return {
            "small": Shape("small", QUICK_SMALL_MODEL, batch=2, seq_len=128),
            "seed": Shape("seed", QUICK_SEED_MODEL, batch=1, seq_len=128),
        }
    return {
        "small": Shape("small", SMALL_MODEL, batch=4, seq_len=512),
        "seed": Shape("seed", SEED_MODEL, batch=1, seq_len=2048),
    }


def scaling_lengths(quick: bool) -> list[int]:
    """Sequence lengths of the scaling sweep (seed widths, batch 1, training step only)."""
    return [128, 256, 512] if quick else [512, 2048, 8192]


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke test")
    parser.add_argument(
        "--configs",
        default="small,seed,scaling",
        help="comma-separated subset of small,seed,scaling (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed steps after one warm-up (default 3, 1 with --quick)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file")
    parser.add_argument(
        "--mem-limit-gb",
        type=float,
        default=16.0,
        help="stop a worker whose RSS passes this (default 16)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=600.0,
        help="stop a worker that runs longer than this (default 600)",
    )
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    args.configs = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = sorted(set(args.configs) - {"small", "seed", "scaling"})
    if unknown:
        parser.error(
            f"unknown configuration(s) {', '.join(unknown)}: choose from small,seed,scaling"
        )
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# ---------------------------------------------------------------------------------------------
# what is run: the plan, the runs, the rows
# ---------------------------------------------------------------------------------------------


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


@dataclass
class Job:
    """A planned measurement: which table it belongs to and its two tasks."""

    section: str
    label: str
    timing: Task
    flops: Task


@dataclass
class Row:
    """One line of the results table (also what --json writes)."""

    section: str
    label: str
    impl: str
    checkpoint: bool
    retrieval: bool
    mode: str
    batch: int
    seq_len: int
    status: str
    detail: str = ""
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    repeats_done: int = 0
    tokens_per_s: float | None = None
    flops: int | None = None
    flops_device: str | None = None
    flops_detail: str = ""
    flops_per_s: float | None = None
    mfu: float | None = None
    baseline_rss: int | None = None
    peak_rss: int | None = None
    ru_maxrss: int | None = None
    params: int | None = None
    malloc_kept: bool | None = None


def impl_label(impl: str, checkpoint: bool) -> str:
    return "ours, checkpointed" if checkpoint else impl


def plan_jobs(args: argparse.Namespace) -> list[Job]:
    """The measurements of the chosen configurations, in table order."""
    shapes = configurations(args.quick)
    jobs = []
    for name in ("small", "seed"):
        if name not in args.configs:
            continue
        shape = shapes[name]
        for impl in ("ours", "reference"):
            for retrieval in (True, False):
                for mode in ("train", "forward"):
                    task = Task(
                        "time", impl, shape.model, shape.batch, shape.seq_len, repeats=args.repeats
                    )
                    task = replace(task, retrieval=retrieval, mode=mode)
                    jobs.append(Job(name, impl, task, replace(task, kind="flops")))
    for name in ("small", "seed"):  # the same training steps with glibc's malloc left alone
        if name not in args.configs:
            continue
        shape = shapes[name]
        for impl in ("ours", "reference"):
            task = Task("time", impl, shape.model, shape.batch, shape.seq_len, repeats=args.repeats)
            task = replace(task, system_malloc=True)
            jobs.append(
                Job(
                    f"allocator {name}",
                    f"{impl}, system malloc",
                    task,
                    replace(task, kind="flops", system_malloc=False),
                )
            )
    if "scaling" in args.configs:
        lengths = scaling_lengths(args.quick)
        base = shapes["seed"].model
        for seq_len in lengths:
            model = {**base, "max_seq_len": seq_len}
            variants = [("ours", True), ("ours", False), ("reference", False)]
            for impl, checkpoint in variants:
                if impl == "ours" and not checkpoint and seq_len == lengths[-1]:
                    continue  # ours without checkpointing only at the two shorter lengths
                task = Task(
                    "time", impl, model, 1, seq_len, checkpoint=checkpoint, repeats=args.repeats
                )
                flops = replace(task, kind="flops", checkpoint=False)
                jobs.append(Job("scaling", impl_label(impl, checkpoint), task, flops))
    return jobs


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, run every task, print the tables; return everything for --json."""
    wall_start = time.perf_counter()
    jobs = plan_jobs(args)
    with TaskRunner(__file__, timeout_s=args.timeout_s, mem_limit_gb=args.mem_limit_gb) as runner:
        machine = [measure_machine(runner, args, SEED)]
        flops, timings = run_jobs(runner, jobs, matmul_peak(machine), wall_start)
        profiles = run_profiles(runner, args)
        machine.append(measure_machine(runner, args, SEED + 1))  # a second, independent sample

    peak = matmul_peak(machine)
    rows = [make_row(*measured, peak) for measured in zip(jobs, timings, flops, strict=True)]
    wall_s = time.perf_counter() - wall_start
    print_report(machine, args, rows, profiles, wall_s)
    return {
        "machine": machine,
        "matmul_peak_flops_per_s": peak,
        "wall_s": wall_s,
        "args": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if not key.startswith("worker")
        },
        "rows": [asdict(row) for row in rows],
        "profiles": profiles,
    }


def measure_machine(runner: TaskRunner, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Run the machine task (at least 2 GiB allowed: the 4096² matmul needs it) or exit."""
    result = runner.run(Task("machine", seed=seed), mem_limit_gb=max(args.mem_limit_gb, 2.0))
    if result.get("status") != "ok":
        raise SystemExit(f"the matmul benchmark failed: {result.get('detail')}")
    return result


def run_jobs(
    runner: TaskRunner, jobs: list[Job], matmul_rate: float, wall_start: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Count every job's FLOPs (identical counts run once), then time every job; log progress."""
    flops = [runner.run(job.flops) for job in jobs]
    counted = {json.dumps(asdict(job.flops), sort_keys=True, default=list) for job in jobs}
    log(f"counted FLOPs of {len(counted)} model/configurations")
    timings = []
    for index, (job, flop_count) in enumerate(zip(jobs, flops, strict=True), 1):
        timing = runner.run(job.timing)
        timings.append(timing)
        row = make_row(job, timing, flop_count, matmul_rate)
        log(
            f"[{index}/{len(jobs)}] {row.section} {row.label} retrieval "
            f"{'on' if row.retrieval else 'off'} {row.mode} {row.seq_len}: "
            f"{fmt_seconds(row.median_s)} s/step, peak {format_bytes(row.peak_rss)} "
            f"{row.status} [{time.perf_counter() - wall_start:.0f} s]"
        )
    return flops, timings


def run_profiles(runner: TaskRunner, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The encoder / CCA time split of ours, retrieval on, at the small and seed configurations."""
    profiles = {}
    shapes = configurations(args.quick)
    for name in ("small", "seed"):
        if name not in args.configs:
            continue
        shape = shapes[name]
        task = Task(
            "profile", "ours", shape.model, shape.batch, shape.seq_len, repeats=args.repeats
        )
        profiles[name] = runner.run(task)
        log(f"profiled {name}")
    return profiles


def make_row(job: Job, timing: dict[str, Any], flops: dict[str, Any], matmul_peak: float) -> Row:
    """Combine a timing result and a FLOP count into a table row."""
    task = job.timing
    row = Row(
        job.section,
        job.label,
        task.impl,
        task.checkpoint,
        task.retrieval,
        task.mode,
        task.batch,
        task.seq_len,
        timing["status"],
        timing.get("detail", ""),
    )
    row.flops = flops.get("flops")
    row.flops_device = flops.get("flops_device")
    row.flops_detail = flops.get("detail", "")
    row.baseline_rss = timing.get("baseline_rss")
    row.peak_rss = timing.get("peak_rss")
    row.ru_maxrss = timing.get("ru_maxrss")
    row.params = timing.get("params")
    row.malloc_kept = timing.get("malloc_kept")
    if timing["status"] != "ok":
        return row
    row.times_s = timing["times_s"]
    row.repeats_done = timing["repeats_done"]
    row.median_s = statistics.median(row.times_s)
    row.tokens_per_s = task.batch * task.seq_len / row.median_s
    if row.flops:
        row.flops_per_s = row.flops / row.median_s
        row.mfu = row.flops_per_s / matmul_peak
    return row


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


# ---------------------------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------------------------


def results_table(rows: list[Row]) -> str:
    headers = [
        "config",
        "implementation",
        "retrieval",
        "pass",
        "batch × seq",
        "n",
        "s/step",
        "tokens/s",
        "GFLOP/step",
        "GFLOP/s",
        "MFU",
        "RSS after build",
        "peak RSS",
        "status",
    ]
    body = []
    for row in rows:
        repeats = (
            "warm-up" if row.status == "ok" and row.repeats_done == 0 else str(row.repeats_done)
        )
        body.append(
            [
                row.section,
                row.label,
                "on" if row.retrieval else "off",
                row.mode,
                f"{row.batch} × {row.seq_len}",
                repeats if row.status == "ok" else "—",
                fmt_seconds(row.median_s),
                fmt_number(row.tokens_per_s, digits=0),
                fmt_number(row.flops, 1e9),
                fmt_number(row.flops_per_s, 1e9),
                fmt_percent(row.mfu),
                format_bytes(row.baseline_rss),
                format_bytes(row.peak_rss),
                row.status if row.status == "ok" else row.detail,
            ]
        )
    return markdown_table(headers, body)


def find_row(rows: list[Row], **match: Any) -> Row | None:
    for row in rows:
        if all(getattr(row, name) == value for name, value in match.items()):
            return row
    return None


STATUS_SHORT = {"oom": "out of memory", "timeout": "timeout", "error": "error"}


def speed_ratio(ours: Row, ref: Row) -> str:
    """ours / reference tokens per second, or which of them did not finish."""
    for name, row in (("ours", ours), ("ref", ref)):
        if row.status != "ok":
            return f"{name}: {STATUS_SHORT.get(row.status, row.status)}"
    return fmt_ratio(ours.tokens_per_s, ref.tokens_per_s)


def memory_ratio(ours: Row, ref: Row) -> str:
    """ours / reference peak RSS; a bound where the reference was stopped for memory."""
    if ours.status == "ok" and ref.status == "oom":
        return "< " + fmt_ratio(ours.peak_rss, ref.peak_rss) + " (ref stopped)"
    if ours.status != "ok" or ref.status != "ok":
        return "—"
    return fmt_ratio(ours.peak_rss, ref.peak_rss)


def on_off_ratio(rows: list[Row], impl: str, section: str, mode: str) -> str:
    """Time with retrieval on / time with retrieval off, for one implementation."""
    pick = {"impl": impl, "section": section, "mode": mode}
    on = find_row(rows, retrieval=True, **pick)
    off = find_row(rows, retrieval=False, **pick)
    return fmt_ratio(on and on.median_s, off and off.median_s)


def ratio_table(rows: list[Row]) -> str:
    """ours / reference speed and memory, and retrieval on / off time, per configuration."""
    headers = [
        "config",
        "pass",
        "retrieval",
        "ours/ref tokens/s",
        "ours/ref peak RSS",
        "on/off time, ours",
        "on/off time, ref",
    ]
    body = []
    for section in ("small", "seed"):
        for mode in ("train", "forward"):
            for retrieval in (True, False):
                pick = {"section": section, "mode": mode, "retrieval": retrieval}
                ours = find_row(rows, impl="ours", **pick)
                ref = find_row(rows, impl="reference", **pick)
                if ours is None or ref is None:
                    continue
                on_off = ["", ""]
                if retrieval:
                    on_off = [
                        on_off_ratio(rows, impl, section, mode) for impl in ("ours", "reference")
                    ]
                body.append(
                    [
                        section,
                        mode,
                        "on" if retrieval else "off",
                        speed_ratio(ours, ref),
                        memory_ratio(ours, ref),
                        *on_off,
                    ]
                )
    for row in rows:
        if row.section != "scaling" or row.impl != "ours":
            continue
        ref = find_row(rows, section="scaling", impl="reference", seq_len=row.seq_len)
        if ref is not None:
            body.append(
                [
                    f"scaling {row.seq_len}",
                    f"train ({row.label})",
                    "on",
                    speed_ratio(row, ref),
                    memory_ratio(row, ref),
                    "",
                    "",
                ]
            )
    return markdown_table(headers, body)


def allocator_table(rows: list[Row]) -> str:
    """Training step with freed memory kept (every other row) against glibc's default malloc."""
    headers = [
        "config",
        "implementation",
        "s/step, kept",
        "s/step, system malloc",
        "speed-up",
        "MFU, kept",
        "MFU, system malloc",
        "peak RSS, kept",
        "peak RSS, system malloc",
    ]
    body = []
    for section in ("small", "seed"):
        for impl in ("ours", "reference"):
            kept = find_row(rows, section=section, impl=impl, mode="train", retrieval=True)
            system = find_row(rows, section=f"allocator {section}", impl=impl)
            if kept is None or system is None:
                continue
            body.append(
                [
                    section,
                    impl,
                    fmt_seconds(kept.median_s),
                    fmt_seconds(system.median_s),
                    fmt_ratio(system.median_s, kept.median_s),
                    fmt_percent(kept.mfu),
                    fmt_percent(system.mfu),
                    format_bytes(kept.peak_rss),
                    format_bytes(system.peak_rss),
                ]
            )
    return markdown_table(headers, body)


def profile_table(profiles: dict[str, dict[str, Any]]) -> str:
    """Median per-step seconds inside the encoder and the CCA modules, and their share."""
    headers = [
        "config",
        "pass",
        "step s",
        "encoder fwd",
        "encoder bwd",
        "CCA fwd",
        "CCA bwd",
        "encoder + CCA share",
    ]
    body = []
    for section, profile in profiles.items():
        if profile.get("status", "ok") != "ok":
            body.append([section, "—", "—", "—", "—", "—", "—", profile.get("detail", "")])
            continue
        for mode in ("train", "forward"):
            steps = profile[mode]
            median = {
                key: statistics.median(step.get(key, 0.0) for step in steps)
                for key in ("step", "encoder_fwd", "encoder_bwd", "cca_fwd", "cca_bwd")
            }
            inside = sum(value for key, value in median.items() if key != "step")
            cells = [median[key] for key in ("encoder_fwd", "encoder_bwd", "cca_fwd", "cca_bwd")]
            if mode == "forward":
                cells[1] = cells[3] = None
            body.append(
                [
                    section,
                    mode,
                    fmt_seconds(median["step"]),
                    *(fmt_seconds(cell) for cell in cells),
                    f"{100 * inside / median['step']:.0f}%",
                ]
            )
    return markdown_table(headers, body)


def result_notes(rows: list[Row]) -> list[str]:
    """What the reader needs to know about how some numbers were obtained."""
    notes = set()
    for row in rows:
        if row.flops_device == "cpu":
            notes.add(
                f"FLOPs of {row.impl} counted by running it once on the CPU, {row.flops_detail}"
            )
        elif row.flops is None and row.flops_detail:
            notes.add(f"FLOPs of {row.impl} not counted: {row.flops_detail}")
        if row.status == "ok" and row.repeats_done < 1:
            notes.add("n = warm-up: no time was left for a timed repeat; the warm-up is shown")
    if any(row.impl == "reference" for row in rows):
        notes.add(
            "the reference passes no `heads` to its encoder and decoder (they use 8 heads): "
            "at heads != 8 (small: 6) it computes 8 x dim_head attention, so more FLOPs"
        )
    return sorted(notes)


def header_lines(machine: list[dict[str, Any]], args: argparse.Namespace, peak: float) -> list[str]:
    first = machine[0]
    samples = "; ".join(
        f"{label} (load {m['load_average_1min']:.1f}): "
        + ", ".join(f"{size}² {rate / 1e9:.0f}" for size, rate in m["matmul_flops_per_s"].items())
        for label, m in zip(("start", "end"), machine, strict=False)
    )
    return [
        "# RETRO training-step benchmark: ours vs retro-pytorch 0.3.9",
        "",
        f"- torch {first['torch']}, {first['threads']} threads (os.cpu_count() = "
        f"{first['cpu_count']}), CPU: {first['cpu']}",
        f"- fp32 matmul GFLOP/s, median per size, 1-min load average in brackets — {samples}; "
        f"MFU denominator (the best of them): {peak / 1e9:.0f} GFLOP/s",
        f"- {args.repeats} timed repeat(s) after 1 warm-up, median; per worker: memory limit "
        f"{args.mem_limit_gb:g} GiB, timeout {args.timeout_s:g} s"
        + ("; --quick (tiny sizes)" if args.quick else ""),
        "- FLOPs: torch.utils.flop_counter, forward (+ backward for train), checkpointing off; "
        "each measurement in its own process (RSS = that process's)",
    ]


def matmul_peak(machine: list[dict[str, Any]]) -> float:
    return max(rate for m in machine for rate in m["matmul_flops_per_s"].values())


def print_report(
    machine: list[dict[str, Any]],
    args: argparse.Namespace,
    rows: list[Row],
    profiles: dict[str, dict[str, Any]],
    wall_s: float,
) -> None:
    print("\n".join(header_lines(machine, args, matmul_peak(machine))))
    print("\n## Results\n")
    print(results_table(rows))
    print("\n## Ratios\n")
    print(ratio_table(rows))
    allocator = allocator_table(rows)
    if allocator.count("\n") > 1:
        print("\n## Allocator: freed memory kept (all rows above) vs glibc's default malloc\n")
        print(allocator)
    if profiles:
        print("\n## Where the time goes (ours, retrieval on; median seconds per step)\n")
        print(profile_table(profiles))
        for name, profile in profiles.items():
            for note in profile.get("notes", []):
                print(f"- {name}: {note}")
            for group, names in profile.get("modules", {}).items():
                print(f"- {name}: {group} = {', '.join(names)}")
    print()
    for note in result_notes(rows):
        print(f"- {note}")
    print(f"\nwall time: {wall_s:.0f} s")


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return serve(args, WORKER_TASKS)
    results = run_benchmark(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=list))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

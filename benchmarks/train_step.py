"""Training-step and forward-pass benchmark: our RETRO against retro-pytorch 0.3.9, in one run.

    python benchmarks/train_step.py [--quick] [--configs small,seed,scaling] [--repeats N]
                                    [--json out.json] [--mem-limit-gb 16] [--timeout-s 600]

Every measurement (one implementation, one configuration, one pass) is a task that
``_tasks.TaskRunner`` runs in a fresh process of this script, so that its peak RSS is its own;
the worker's memory guard and an address-space limit turn "more memory than allowed" into a table
entry instead of a machine brought to its knees, and a timeout does the same for time. FLOPs are
counted once per model and configuration with ``torch.utils.flop_counter``, in tasks of their own
(on the meta device where the model allows it). See ``benchmarks/README.md``.

The script reads top-down: the configurations and options, what is run, the report. The tasks
(what one worker measures) are in ``train_step_tasks.py``, the tables in ``train_step_report.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from _common import fmt_seconds, format_bytes, log
from _tasks import TaskRunner, add_worker_arguments, serve
from train_step_report import Row, matmul_peak, print_report
from train_step_tasks import SEED, WORKER_TASKS, Task

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
class Job:
    """A planned measurement: which table it belongs to and its two tasks."""

    section: str
    label: str
    timing: Task
    flops: Task


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

"""Training throughput under torchrun: one process against N processes (DDP, gloo on the CPU)
with the same global batch, in one run, and the communication one step needs.

    python benchmarks/distributed_train.py [--quick] [--processes 1,2] [--repeats N]
                                           [--json benchmarks/results/distributed_train.json]

Each process count is a fresh run of this script (hidden ``--worker`` flag): one plain process
for 1, ``python -m torch.distributed.run --standalone --nproc-per-node N`` for more. A worker
builds the RETRO of the configuration (seeded, identical in every process), cuts every rank's
contiguous slice of one random global batch (random token ids, two neighbours of 128 tokens
per 64-token chunk, as ``train_step.py``), and times ``train_step`` exactly as the training
loop calls it: under DDP with the target-token counts summed over the processes first.
Wall time and the CPU seconds of all processes' threads are both recorded: on shared cores
the wall time depends on what else runs, the CPU time less (OpenMP threads that spin while
waiting for a descheduled sibling count too). Torch threads per process
are the cores divided among the processes (what ``retro-platform run``
does), and one process is also run on one thread, the share each of 2 processes gets on 2
cores; one warm-up step, then ``--repeats`` timed steps, median.

Communication: DDP all-reduces every trainable parameter's fp32 gradient once per step
(``parameters × 4`` bytes, in DDP's buckets, assigned with DDP's own function as its rebuild
after the first step does), and
the worker times a lone ``all_reduce`` of that many bytes on the same group. From that volume
the report *projects* (does not measure) the time of a ring all-reduce, ``2 (N - 1) / N ×
bytes / bandwidth``, on N GPUs over NVLink, 100 Gb/s and 25 Gb/s Ethernet: a lower bound that
ignores latency and the overlap of DDP's buckets with the backward pass.

On the 2 cores of the machines this project is measured on, 2 processes cannot be faster than
one: they share the same cores (one thread each instead of two) and add the all-reduce. The
point is the overhead, and that the step is the same computation (the losses are printed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import cpu_model, ensure_repo_on_path, log, markdown_table
from train_step import QUICK_SMALL_MODEL, SMALL_MODEL  # the same models as the step benchmark

FULL = {"model": SMALL_MODEL, "batch": 4, "seq_len": 512, "repeats": 3}
QUICK = {"model": QUICK_SMALL_MODEL, "batch": 4, "seq_len": 128, "repeats": 2}

#: Link bandwidths of the projection, bytes per second.
LINKS = {
    "NVLink (~300 GB/s per GPU)": 300e9,
    "100 Gb/s Ethernet": 100e9 / 8,
    "25 Gb/s Ethernet": 25e9 / 8,
}
PROJECTED_GPUS = (2, 8, 16, 64)
CHUNK, NEIGHBOURS = 64, 2


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny model: a smoke test")
    parser.add_argument("--processes", default="1,2", help="process counts to compare")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps (median)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(json.loads(args.config), args.worker)
        return

    config = dict(QUICK if args.quick else FULL)
    if args.repeats:
        config["repeats"] = args.repeats
    counts = [int(n) for n in args.processes.split(",")]
    load_before = os.getloadavg()[0]
    rows = []
    for count in counts:
        log(f"{count} process(es): {config['batch']} x {config['seq_len']} tokens per step")
        rows.append(measure(config, count))
        if count == 1:  # the same process on one core: what each of 2 processes has
            rows.append(measure({**config, "threads": 1}, 1))
    results = {
        "quick": args.quick,
        "machine": {
            "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)),
            # other work on the cores slows a 2-thread process most: compare rows of one run
            "load_1min": [load_before, os.getloadavg()[0]],
        },
        "config": {**config, "model": dict(config["model"])},
        "rows": rows,
        "projection": projection(rows),
    }
    print_report(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=list))


def measure(config: dict[str, Any], count: int) -> dict[str, Any]:
    """One process count, in fresh processes; what process 0 measured."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "row.json"
        script = [str(Path(__file__).resolve()), "--worker", str(out), "--config",
                  json.dumps(config)]  # fmt: skip
        if count == 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc-per-node={count}", *script]  # fmt: skip
        cores = len(os.sched_getaffinity(0))
        threads = config.get("threads") or max(1, cores // count)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return {"processes": count, "status": done.stderr.strip()[-500:] or "failed"}
        row = json.loads(out.read_text())
        row["wall_s"] = time.perf_counter() - started
        return row


def projection(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Ring all-reduce seconds per step for the gradient volume, by link and GPU count."""
    measured = next((row for row in rows if row.get("gradient_bytes")), None)
    if measured is None:
        return {}
    volume = measured["gradient_bytes"]
    return {
        "gradient_bytes": volume,
        "seconds": {
            link: {str(n): 2 * (n - 1) / n * volume / bandwidth for n in PROJECTED_GPUS}
            for link, bandwidth in LINKS.items()
        },
    }


# ---------------------------------------------------------------------------------------------
# the worker (one per process)
# ---------------------------------------------------------------------------------------------


def worker(config: dict[str, Any], out: Path) -> None:
    ensure_repo_on_path()
    import torch
    import torch.distributed as dist

    from retro_platform import RETRO
    from retro_platform.config.runner_tables import TrainTable
    from retro_platform.training import distributed
    from retro_platform.training.batch import Batch
    from retro_platform.training.optim import build_optimizer, build_scheduler
    from retro_platform.training.step import StepOptions, TrainState, train_step

    processes = distributed.start("cpu")
    # this node's cores shared out among its processes, as training does, unless the row says
    threads = distributed.threads_per_process(processes, config.get("threads"))
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = RETRO(**config["model"])
    settings = TrainTable(steps=100, lr=1e-4, warmup_steps=0, batch_size=config["batch"])
    optimizer = build_optimizer(model, settings)
    state = TrainState(model, optimizer, build_scheduler(optimizer, settings))
    wrapped = None
    if processes.distributed:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        state.wrapped = wrapped
    options = StepOptions(torch.device("cpu"), 1.0, False, processes.world_size)

    batch, n = config["batch"], config["seq_len"]
    share = batch // processes.world_size
    rows = slice(processes.rank * share, (processes.rank + 1) * share)
    generator = torch.Generator().manual_seed(1)
    vocab = config["model"]["num_tokens"]
    tokens = torch.randint(1, vocab, (batch, n + 1), generator=generator)
    retrieved = torch.randint(1, vocab, (batch, n // CHUNK, NEIGHBOURS, 2 * CHUNK),
                              generator=generator)  # fmt: skip
    mine = Batch(
        tokens=tokens[rows],
        retrieved=retrieved[rows],
        chunk_rows=torch.zeros(share, n // CHUNK, dtype=torch.long),
        neighbour_rows=torch.zeros(share, n // CHUNK, NEIGHBOURS, dtype=torch.long),
        chunk_bytes=torch.zeros(share, n // CHUNK, dtype=torch.long),
    )

    times, cpu, losses = [], [], []
    for _ in range(1 + config["repeats"]):
        started, used = time.perf_counter(), time.process_time()
        totals = None
        if processes.distributed:
            totals = distributed.sum_counts(processes, [mine.targets(model.pad_id)])
        done = train_step(state, [mine], options, token_totals=totals)
        times.append(time.perf_counter() - started)
        # CPU seconds of every thread of every process: the cost, whatever else the cores run
        loss, seconds = distributed.sum_over_processes(
            processes, [float(done.loss), time.process_time() - used]
        )
        losses.append(loss)
        cpu.append(seconds)

    trainable = [p for p in model.parameters() if p.requires_grad]
    gradient_bytes = sum(p.numel() * p.element_size() for p in trainable)
    row: dict[str, Any] = {
        "processes": processes.world_size,
        "threads_per_process": torch.get_num_threads(),
        "global_batch": batch,
        "tokens_per_step": batch * n,
        "parameters": sum(p.numel() for p in trainable),
        "gradient_bytes": gradient_bytes,
        "warmup_s": times[0],
        "step_s": times[1:],
        "median_step_s": statistics.median(times[1:]),
        "cpu_s": cpu[1:],
        "median_cpu_s": statistics.median(cpu[1:]),
        "losses": losses,
        "status": "ok",
    }
    row["tokens_per_s"] = row["tokens_per_step"] / row["median_step_s"]
    if wrapped is not None:
        # DDP starts with one bucket and, after the first step, rebuilds them in the order the
        # gradients became ready (about the reverse of the parameters'), capped at 1 MiB for
        # the first and 25 MiB for the others: the buckets of every later step
        cap = int(wrapped._get_ddp_logging_data().get("bucket_cap_bytes", 25 * 2**20))
        order = list(reversed(trainable))
        limits = [dist._DEFAULT_FIRST_BUCKET_BYTES, cap]
        groups, _ = dist._compute_bucket_assignment_by_size(order, limits)
        row["ddp_buckets_bytes"] = [
            sum(order[i].numel() * order[i].element_size() for i in group) for group in groups
        ]
        row["ddp_bucket_cap_bytes"] = cap
        flat = torch.ones(gradient_bytes // 4, dtype=torch.float32)
        spans = []
        for _ in range(1 + config["repeats"]):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(flat)
            spans.append(time.perf_counter() - started)
        row["allreduce_s"] = statistics.median(spans[1:])
    if processes.is_main:
        out.write_text(json.dumps(row))
    distributed.stop(processes)


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    config, rows = results["config"], results["rows"]
    mode = " (--quick: a tiny model, a smoke test)" if results["quick"] else ""
    machine = results["machine"]
    print(f"# Distributed training benchmark{mode}\n")
    load = machine["load_1min"]
    print(f"{machine['cpu']}, {machine['cores']} cores (1-minute load {load[0]:.1f} before, "
          f"{load[1]:.1f} after); global batch {config['batch']} x "
          f"{config['seq_len']} tokens, {NEIGHBOURS} neighbours per chunk; median of "
          f"{config['repeats']} steps after a warm-up\n")  # fmt: skip
    base = rows[0] if rows and rows[0]["status"] == "ok" else None
    table = []
    for row in rows:
        if row["status"] != "ok":
            table.append([str(row["processes"]), "", "", "", "", "", "", row["status"]])
            continue
        ratio = f"{row['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else ""
        reduce = f"{row['allreduce_s']:.3f}" if "allreduce_s" in row else "-"
        table.append([
            str(row["processes"]),
            str(row["threads_per_process"]),
            f"{row['median_step_s']:.3f}",
            f"{row['tokens_per_s']:,.0f}",
            ratio,
            f"{row['median_cpu_s']:.2f}",
            reduce,
            " ".join(f"{loss:.5f}" for loss in row["losses"]),
        ])  # fmt: skip
    print("## Throughput, same global batch\n")
    headers = ["processes", "threads each", "median s/step", "tokens/s", "vs 1 process",
               "CPU s/step, all processes", "all-reduce s (measured)", "loss per step"]  # fmt: skip
    print(markdown_table(headers, table))
    projected = results["projection"]
    if not projected:
        return
    measured = next(r for r in rows if r.get("gradient_bytes"))
    buckets = next((r["ddp_buckets_bytes"] for r in rows if r.get("ddp_buckets_bytes")), None)
    print("\n## Communication per step\n")
    print(f"{measured['parameters']:,} trainable parameters: "
          f"{_mb(projected['gradient_bytes'])} of fp32 gradients all-reduced per "
          "optimizer step (bf16 autocast leaves the gradients fp32)")  # fmt: skip
    if buckets:
        print(f"DDP buckets after the first step: {len(buckets)} "
              f"({', '.join(_mb(b) for b in buckets)}), each all-reduced as soon as its "
              "gradients are ready, overlapping the rest of the backward pass")  # fmt: skip
    print("\n## Projection (not measured): ring all-reduce of that volume per step\n")
    print(
        "2 (N - 1) / N x bytes / link bandwidth; a lower bound: no latency, no overlap with "
        "the backward pass (which DDP's buckets give)\n"
    )
    rows_out = [
        [link] + [f"{seconds[str(n)] * 1000:,.1f} ms" for n in PROJECTED_GPUS]
        for link, seconds in projected["seconds"].items()
    ]
    print(markdown_table(["link", *(f"N = {n}" for n in PROJECTED_GPUS)], rows_out))


def _mb(count: float) -> str:
    return f"{count / 1e6:,.1f} MB"  # decimal, as link bandwidths are


if __name__ == "__main__":
    main()

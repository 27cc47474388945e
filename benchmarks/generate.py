"""Generation benchmark (issue 13): the cached decoder against the alternatives, in one run.

    python benchmarks/generate.py [--experiment examples/quickstart.toml] [--set KEY=VALUE]
                                  [--quick] [--repeats N] [--json PATH]

1. Tokens/s for ``--new-tokens`` (512) new tokens after a ``--prompt-tokens`` (64) token prompt,
   greedy, retrieval on: the cached path (``retro_platform.generation.generate``) against the
   recompute path generation had before (a full forward over the window for every token, the
   same retrieval), and whether both make the same tokens. Target: at least 10x.
2. The same model with retrieval off, cached, against a random-weight Hugging Face
   ``GPT2LMHeadModel`` of the same width, depth, heads and vocabulary with its own KV cache
   (``generate`` and a hand-written ``past_key_values`` loop). Target: at least 1.0x.
3. Where the cached path's time goes and what retrieval costs per completed chunk (embedding,
   index search, neighbour tokens, encoder + CCA keys), at the experiment's chunk size and at
   ``--compare-chunk-size`` (64; a second corpus and index in the same store, built on first
   use); retrieval on against off there. Target: on costs at most 1.3x off at chunk size 64.
4. Batch 1 and batch ``--batch`` (8): tokens/s counts every row.

Every comparison is a task that ``_tasks.TaskRunner`` runs in a fresh process of this script;
inside it the variants are timed alternately, ``--repeats`` times after a warm-up, and the
medians are reported. The store is ingested and indexed first (reused when stored). The model
is the experiment's trained checkpoint when there is one, else a seeded random-weight model of
the same configuration (speed does not depend on the weights); the report says which. See
``benchmarks/README.md``.

The script reads top-down: the options, what is run, ``main``. What a worker measures is in
``generate_tasks.py``, the tables and the targets in ``generate_report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, log
from _tasks import TaskRunner, add_worker_arguments, serve
from generate_report import machine_facts, print_report
from generate_tasks import WORKER_TASKS

DEFAULT_EXPERIMENT = REPO_ROOT / "examples" / "quickstart.toml"
RESULTS = REPO_ROOT / "benchmarks" / "results"

#: (prompt tokens, new tokens, batch, warm-up tokens, repeats): full and --quick
FULL = {"prompt_tokens": 64, "new_tokens": 512, "batch": 8, "warmup_tokens": 48, "repeats": 3}
QUICK = {"prompt_tokens": 16, "new_tokens": 80, "batch": 2, "warmup_tokens": 20, "repeats": 1}

# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--experiment",
        type=Path,
        default=DEFAULT_EXPERIMENT,
        help="experiment file (default examples/quickstart.toml; its store is built on first use)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a key of the experiment for every measurement (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat: a smoke test")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (3; 1 with --quick)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="(64; 16 with --quick)")
    parser.add_argument("--new-tokens", type=int, default=None, help="(512; 80 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="the larger batch (8; 2 --quick)")
    parser.add_argument(
        "--compare-chunk-size",
        type=int,
        default=64,
        help="the second chunk size of item 3 (64; 0: none)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write everything here (default benchmarks/results/generate[-quick].json)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every worker (default: one per core; 1 with --quick)",
    )
    parser.add_argument("--mem-limit-gb", type=float, default=8.0, help="per worker (8)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per worker (3600)")
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("repeats", "prompt_tokens", "new_tokens", "batch"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                parser.error(f"--{key.replace('_', '-')} must be at least 1")
            sizes[key] = value
    if args.threads is None:
        args.threads = 1 if args.quick else os.cpu_count() or 1
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    sizes["threads"] = args.threads
    args.sizes = sizes
    if args.compare_chunk_size < 0:
        parser.error("--compare-chunk-size must be at least 0")
    if args.json is None:
        args.json = RESULTS / ("generate-quick.json" if args.quick else "generate.json")
    return args


# ---------------------------------------------------------------------------------------------
# what is run
# ---------------------------------------------------------------------------------------------


def variant(name: str, impl: str, retrieval: bool, batch: int, new_tokens: int) -> dict[str, Any]:
    return {
        "name": name,
        "impl": impl,
        "retrieval": retrieval,
        "batch": batch,
        "new_tokens": new_tokens,
    }


def comparisons(prepared: dict[str, Any], sizes: dict[str, int], main: bool) -> list[dict]:
    """The comparisons of one chunk size: batch 1 and the larger batch. At the experiment's own
    chunk size (``main``) the recompute path and GPT-2 take part; the recompute path at batch
    1 only (it generated one prompt at a time)."""
    new, batch = sizes["new_tokens"], sizes["batch"]
    # no window slide: as many new tokens as fit max_seq_len after the prompt
    fits = prepared["model_config"]["max_seq_len"] - sizes["prompt_tokens"]
    plans = []
    for rows in (1, batch) if batch > 1 else (1,):
        variants = [
            variant("cached, retrieval on", "cached", True, rows, new),
            variant("cached, retrieval off", "cached", False, rows, new),
        ]
        if main:
            if rows == 1:
                variants.insert(0, variant("recompute, retrieval on", "recompute", True, 1, new))
            variants += [
                variant("GPT-2 generate()", "gpt2-generate", False, rows, new),
                variant("GPT-2 past_key_values loop", "gpt2-loop", False, rows, new),
            ]
            if rows == 1 and 0 < fits < new:
                variants += [
                    variant("cached, retrieval off, no slide", "cached", False, 1, fits),
                    variant("GPT-2 generate(), no slide", "gpt2-generate", False, 1, fits),
                    variant("GPT-2 past_key_values loop, no slide", "gpt2-loop", False, 1, fits),
                ]
        plans.append({"batch": rows, "variants": variants})
    return plans


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    sizes = args.sizes
    experiment = str(args.experiment.resolve())
    results: dict[str, Any] = {
        "command": "python benchmarks/generate.py "
        + " ".join(shlex.quote(arg) for arg in args.argv),
        "quick": args.quick,
        "experiment": experiment,
        "overrides": args.overrides,
        "sizes": sizes,
        "machine": machine_facts(),
        "load_average": [os.getloadavg()[0]],
        "chunk_sizes": [],
    }
    runner = TaskRunner(__file__, timeout_s=args.timeout_s, mem_limit_gb=args.mem_limit_gb)
    with runner:
        setups = [(list(args.overrides), True)]
        for overrides, main in setups:
            prepared = prepare(runner, experiment, overrides, sizes)
            if prepared.get("status") != "ok":
                raise SystemExit(f"preparing {experiment} {overrides} failed: {prepared}")
            m = prepared["chunk_size"]
            if main and args.compare_chunk_size and args.compare_chunk_size != m:
                second = [*args.overrides, f"retrieval.chunk_size={args.compare_chunk_size}"]
                setups.append((second, False))
            entry = {"chunk_size": m, "main": main, "prepared": prepared, "comparisons": []}
            results["chunk_sizes"].append(entry)
            for plan in comparisons(prepared, sizes, main):
                names = ", ".join(v["name"] for v in plan["variants"])
                log(f"chunk {m}, batch {plan['batch']}: {names}")
                task = {
                    "kind": "compare",
                    "experiment": experiment,
                    "overrides": overrides,
                    "variants": plan["variants"],
                    "repeats": sizes["repeats"],
                    "warmup_tokens": sizes["warmup_tokens"],
                    "threads": sizes["threads"],
                    "prompts": prepared["prompts"],
                }
                outcome = runner.run(task)
                outcome["batch"] = plan["batch"]
                entry["comparisons"].append(outcome)
                log(f"    {outcome.get('status')} {outcome.get('detail', '')}")
    results["load_average"].append(os.getloadavg()[0])
    results["wall_s"] = time.perf_counter() - started
    return results


def prepare(
    runner: TaskRunner, experiment: str, overrides: list[str], sizes: dict[str, int]
) -> dict[str, Any]:
    log(f"preparing {experiment} {' '.join(overrides)} (ingest + index, reused when stored)")
    prepared = runner.run(
        {
            "kind": "prepare",
            "experiment": experiment,
            "overrides": overrides,
            "prompts": sizes["batch"],
            "prompt_tokens": sizes["prompt_tokens"],
        }
    )
    if prepared.get("status") == "ok":
        log(
            f"    chunk {prepared['chunk_size']}: {prepared['chunks']:,} chunks, model: "
            f"{prepared['model_source']}"
        )
    return prepared


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return serve(args, WORKER_TASKS)
    args.argv = sys.argv[1:] if argv is None else argv
    results = run_benchmark(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))  # first: survives a failure
    log(f"wrote {args.json}")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

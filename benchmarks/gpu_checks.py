"""The GPU checks of issue 16, as one short script for a lent GPU machine.

    python benchmarks/gpu_checks.py                    # on the GPU: every check, a table, JSON
    python benchmarks/gpu_checks.py --device cpu --quick   # the harness on a CPU (gloo, tiny)

1. **bf16 training step** at the seed configuration (the seed README's model, 1 × 2048 tokens
   and larger batches): our ``train_step`` under bf16 autocast, median step time, tokens/s, and
   model FLOP utilisation (MFU) against the GPU's dense bf16 peak. FLOPs are torch's
   ``FlopCounterMode`` count of one step (forward and backward; the optimizer not counted), so
   MFU here is model FLOPs per second over the peak, recomputation and kernel choice aside.
   Which scaled-dot-product kernels torch may pick (flash, memory-efficient, cuDNN) is recorded.
2. **DDP with NCCL in one process**: a process group of size 1 on NCCL (gloo on a CPU), the
   model wrapped in ``DistributedDataParallel``; its loss and gradients must equal the plain
   model's on the same batch, and the step time is compared with the plain step.
3. **Faiss on the CPU with vectors made on the GPU**: all-MiniLM-L6-v2 embeds the same texts on
   the GPU and on the CPU; a flat inner-product Faiss index on the CPU is searched with each set,
   and the top-10 neighbours are compared (overlap, and the largest difference between vectors).

Nothing here is a timed assertion: the script prints a table and writes JSON (``--json``,
default ``benchmarks/results/gpu_checks.json`` on a GPU). A figure is never claimed for a GPU
that did not run it: the JSON records the device's name.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CPU_ATTENTION_FLOPS, ensure_repo_on_path, markdown_table  # noqa: E402
from train_step import QUICK_SEED_MODEL, SEED_MODEL  # noqa: E402

ensure_repo_on_path()
from retro_platform import RETRO  # noqa: E402
from retro_platform.training.batch import Batch  # noqa: E402
from retro_platform.training.step import StepOptions, TrainState, train_step  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_checks.json"
CHUNK, NEIGHBOURS, NEIGHBOUR_LEN = 64, 2, 128

#: Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; the
#: first name that is part of torch's device name wins, so the longer names come first.
BF16_PEAK_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM5
    "H200": 989.4,
    "A100": 312.0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for the harness")
    parser.add_argument("--quick", action="store_true", help="tiny model and inputs")
    parser.add_argument("--batches", default=None, help="batch sizes of check 1, e.g. 1,4,8")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per batch size")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak")
    parser.add_argument("--texts", type=int, default=None, help="texts embedded in check 3")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device is visible: run with --device cpu to check the harness")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next(
        (tflops for key, tflops in BF16_PEAK_TFLOPS.items() if key in name), None
    )
    model_kwargs = QUICK_SEED_MODEL if args.quick else SEED_MODEL
    seq_len = 128 if args.quick else 2048
    batches = [int(b) for b in (args.batches or ("1,2" if args.quick else "1,4,8")).split(",")]
    repeats = args.repeats or (2 if args.quick else 10)
    texts = args.texts or (64 if args.quick else 4096)

    report: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_tflops": peak,
        "quick": args.quick,
        "sdpa_kernels": _sdpa_kernels(device),
    }
    print(f"device: {name}; torch {torch.__version__}; bf16 peak {peak} TFLOP/s", flush=True)
    report["train"] = [
        _train_row(model_kwargs, batch, seq_len, device, repeats, peak) for batch in batches
    ]
    report["ddp"] = _ddp_check(model_kwargs, seq_len, device, repeats)
    report["faiss"] = _faiss_check(device, texts)
    _print(report)
    target = args.json or (RESULTS if device.type == "cuda" and not args.quick else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {target}")


# --- 1. the bf16 training step ---------------------------------------------------------------


def _train_row(
    model_kwargs: dict[str, Any],
    batch: int,
    seq_len: int,
    device: torch.device,
    repeats: int,
    peak: float | None,
) -> dict[str, Any]:
    _free(device)  # the previous row's model, and its peak
    state = _state(model_kwargs, device)
    micro = _batch(model_kwargs, batch, seq_len)
    options = StepOptions(device, grad_clip=1.0, bf16=True)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        train_step(state, [micro], options)  # also the warm-up step
    flops = counter.get_total_flops()
    seconds = _timed(lambda: train_step(state, [micro], options), device, repeats)
    tflops = flops / seconds / 1e12
    row = {
        "batch": batch,
        "seq_len": seq_len,
        "step_s": seconds,
        "tokens_per_s": batch * seq_len / seconds,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "flops_per_step": flops,
        "peak_memory_bytes": (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        ),
    }
    print(
        f"train bf16 batch {batch}: {seconds * 1e3:.1f} ms/step, {tflops:.3g} TFLOP/s", flush=True
    )
    return row


# --- 2. DDP in one process --------------------------------------------------------------------


def _ddp_check(
    model_kwargs: dict[str, Any], seq_len: int, device: torch.device, repeats: int
) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        kwargs = {k: (0.0 if k.endswith("dropout") else v) for k, v in model_kwargs.items()}
        plain = _state(kwargs, device).model
        wrapped_model = _state(kwargs, device).model  # the same seed: the same weights
        wrapped = DistributedDataParallel(
            wrapped_model, device_ids=[device.index or 0] if device.type == "cuda" else None
        )
        micro = _batch(kwargs, 1, seq_len).to(device)

        def step(model: torch.nn.Module) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = model(micro.tokens, micro.retrieved, return_loss=True)
            loss.backward()
            return loss.detach()

        plain_loss, ddp_loss = step(plain), step(wrapped)
        grad_diff = max(
            float((a.grad - b.grad).abs().max())
            for a, b in zip(plain.parameters(), wrapped_model.parameters(), strict=True)
            if a.grad is not None
        )
        plain_s = _timed(lambda: step(plain), device, repeats)
        ddp_s = _timed(lambda: step(wrapped), device, repeats)
    finally:
        dist.destroy_process_group()
    result = {
        "backend": backend,
        "loss_plain": float(plain_loss),
        "loss_ddp": float(ddp_loss),
        "max_grad_difference": grad_diff,
        "step_s_plain": plain_s,
        "step_s_ddp": ddp_s,
        "equal": float(plain_loss) == float(ddp_loss) and grad_diff <= 1e-6,
    }
    print(f"ddp on {backend}: equal={result['equal']} (grad diff {grad_diff:.2e})", flush=True)
    _free(device)
    return result


# --- 3. Faiss on the CPU, vectors from the GPU ------------------------------------------------


def _faiss_check(device: torch.device, count: int) -> dict[str, Any]:
    import faiss

    from retro_platform.default_plugins.embedders.sentence_transformer import (
        SentenceTransformerEmbedder,
        SentenceTransformerOptions,
    )

    texts = _stdlib_texts(count)

    def embed(where: str) -> tuple[np.ndarray, float]:
        options = SentenceTransformerOptions(device=where, workers=1)
        embedder = SentenceTransformerEmbedder(options)
        embedder.embed(texts[:8])  # the model loads outside the timing
        started = time.perf_counter()
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
        return vectors, time.perf_counter() - started

    on_device, device_s = embed(device.type)
    on_cpu, cpu_s = embed("cpu")
    answers = []
    for vectors in (on_device, on_cpu):
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors))
        answers.append(index.search(np.ascontiguousarray(vectors), 11)[1][:, 1:])
    overlap = np.mean(
        [len(set(a) & set(b)) / len(a) for a, b in zip(answers[0], answers[1], strict=True)]
    )
    result = {
        "texts": len(texts),
        "embed_s_device": device_s,
        "embed_s_cpu": cpu_s,
        "max_vector_difference": float(np.abs(on_device - on_cpu).max()),
        "top10_overlap": float(overlap),
    }
    print(f"faiss: top-10 overlap {overlap:.4f} between {device.type} and cpu vectors", flush=True)
    return result


def _stdlib_texts(count: int) -> list[str]:
    """``count`` pieces of 1,000 characters of the standard library's source, in file order."""
    import sysconfig

    texts: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        texts.extend(source[start : start + 1000] for start in range(0, len(source), 1000))
        if len(texts) >= count:
            break
    return texts[:count]


# --- shared -----------------------------------------------------------------------------------


def _state(model_kwargs: dict[str, Any], device: torch.device) -> TrainState:
    torch.manual_seed(0)
    kwargs = {**model_kwargs, "dec_cross_attn_layers": tuple(model_kwargs["dec_cross_attn_layers"])}
    model = RETRO(**kwargs).to(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return TrainState(model, optimizer, scheduler)


def _batch(model_kwargs: dict[str, Any], batch: int, seq_len: int) -> Batch:
    """Random token ids (no padding) and 2 neighbours of 128 tokens per 64-token chunk."""
    generator = torch.Generator().manual_seed(1)
    vocabulary = model_kwargs["num_tokens"]
    tokens = torch.randint(1, vocabulary, (batch, seq_len + 1), generator=generator)
    chunks = seq_len // CHUNK
    retrieved = torch.randint(
        1, vocabulary, (batch, chunks, NEIGHBOURS, NEIGHBOUR_LEN), generator=generator
    )
    unused = torch.full((batch, chunks), -1)  # the rows evaluation reads; a step does not
    return Batch(tokens, retrieved, unused, unused[..., None], torch.zeros(batch, chunks))


def _timed(step: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """The median wall time of ``repeats`` calls, the device synchronised around each."""
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sdpa_kernels(device: torch.device) -> dict[str, bool] | None:
    if device.type != "cuda":
        return None
    backends = torch.backends.cuda
    return {
        "flash": backends.flash_sdp_enabled(),
        "memory_efficient": backends.mem_efficient_sdp_enabled(),
        "cudnn": backends.cudnn_sdp_enabled(),
        "math": backends.math_sdp_enabled(),
    }


def _print(report: dict[str, Any]) -> None:
    peak = report["peak_bf16_tflops"]
    rows = [
        [
            f"{row['batch']} × {row['seq_len']}",
            f"{row['step_s'] * 1e3:,.1f}",
            f"{row['tokens_per_s']:,.0f}",
            f"{row['tflops']:.3g}",
            f"{row['mfu']:.1%}" if row["mfu"] is not None else "no peak known",
        ]
        for row in report["train"]
    ]
    print(f"\n## bf16 training step, seed configuration, on {report['device']} (peak {peak})\n")
    print(markdown_table(["batch", "ms/step", "tokens/s", "TFLOP/s", "MFU"], rows))
    ddp, faiss_row = report["ddp"], report["faiss"]
    print("\n## DDP in one process, and Faiss on vectors from the device\n")
    print(
        markdown_table(
            ["check", "result"],
            [
                [
                    f"DDP ({ddp['backend']}) equals the plain model",
                    f"{ddp['equal']} (loss {ddp['loss_plain']:.5f} vs {ddp['loss_ddp']:.5f}, "
                    f"largest gradient difference {ddp['max_grad_difference']:.1e})",
                ],
                [
                    "DDP step / plain step (forward + backward)",
                    f"{ddp['step_s_ddp'] / ddp['step_s_plain']:.2f}×",
                ],
                [
                    f"top-10 overlap, {faiss_row['texts']} texts, device vs CPU vectors",
                    f"{faiss_row['top10_overlap']:.4f} (largest vector difference "
                    f"{faiss_row['max_vector_difference']:.1e})",
                ],
                [
                    "embedding time, device vs CPU",
                    f"{faiss_row['embed_s_device']:.2f} s vs {faiss_row['embed_s_cpu']:.2f} s",
                ],
            ],
        )
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()

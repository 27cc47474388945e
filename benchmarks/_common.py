"""Helpers shared by the benchmarks: the reference model, memory and process readings, FLOPs,
the machine, medians and tables. Running tasks in fresh processes is ``_tasks.py``'s.

The reference is ``retro-pytorch`` 0.3.9 (installed with ``--no-deps``). Its package ``__init__``
imports ``autofaiss``, which we do not install, so :func:`load_reference_retro` loads only its
model module, ``retro_pytorch/retro_pytorch.py``, straight from site-packages. The one name that
module takes from ``retro_pytorch.retrieval`` (``BERT_VOCAB_SIZE``) is served by a stand-in module.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import resource
import statistics
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

#: The repository root, so that ``retro_platform`` imports without being installed.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: What ``retro_pytorch.retrieval.BERT_VOCAB_SIZE`` is in 0.3.9 (bert-base-cased).
BERT_VOCAB_SIZE = 28996

_REFERENCE_MODULE_NAME = "_retro_pytorch_reference_model"

GIB = 1024**3


def ensure_repo_on_path() -> None:
    """Make ``import retro_platform`` work from a checkout without ``pip install -e``."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def load_reference_retro() -> type:
    """Return the reference ``RETRO`` class from retro-pytorch's model module, without its package.

    Raises:
        ImportError: retro-pytorch is not installed.
    """
    loaded = sys.modules.get(_REFERENCE_MODULE_NAME)
    if loaded is not None:
        return loaded.RETRO

    package_spec = importlib.util.find_spec("retro_pytorch")  # finds it, does not import it
    if package_spec is None or not package_spec.submodule_search_locations:
        raise ImportError(
            "retro-pytorch is not installed: pip install --no-deps retro-pytorch==0.3.9"
        )
    model_path = Path(next(iter(package_spec.submodule_search_locations))) / "retro_pytorch.py"

    # `from retro_pytorch.retrieval import BERT_VOCAB_SIZE` resolves from sys.modules first, so
    # a stand-in there keeps the real retrieval module (and autofaiss) out.
    stand_in = types.ModuleType("retro_pytorch.retrieval")
    stand_in.BERT_VOCAB_SIZE = BERT_VOCAB_SIZE  # type: ignore[attr-defined]
    sys.modules.setdefault("retro_pytorch.retrieval", stand_in)

    spec = importlib.util.spec_from_file_location(_REFERENCE_MODULE_NAME, model_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the reference model module from {model_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_REFERENCE_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module.RETRO


# ---------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmSize``), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def current_rss_bytes() -> int:
    """The resident set size of this process now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except OSError:
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's own peak RSS: ``VmHWM``, else ``ru_maxrss``.

    ``ru_maxrss`` alone is not honest for a process started with fork/vfork + exec on Linux:
    exec folds the *parent's* high-water mark into it. Where the parent is small (as in the
    benchmark drivers here) the two agree; ``VmHWM`` belongs to the process's own address space.
    """
    hwm_kib = _status_kib("VmHWM")
    if hwm_kib is not None:
        return hwm_kib * 1024
    return ru_maxrss_bytes()


def ru_maxrss_bytes() -> int:
    """``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def virtual_size_bytes() -> int:
    """The address-space size of this process now (``VmSize``), or 0."""
    kib = _status_kib("VmSize")
    return 0 if kib is None else kib * 1024


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of the machine, or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# FLOP counting
# ---------------------------------------------------------------------------------------------


def _attention_flops(query_shape: Any, key_shape: Any, value_shape: Any) -> int:
    """Scores (q·kᵀ) and weighted sum (p·v), over the full score matrix as the counter does."""
    batch, heads, queries, query_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    return 2 * batch * heads * queries * keys * (query_dim + value_dim)


def _cpu_flash_attention_flop(
    query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any
) -> int:
    return _attention_flops(query_shape, key_shape, value_shape)


def _cpu_flash_attention_backward_flop(
    _grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any
) -> int:
    return 2 * _attention_flops(query_shape, key_shape, value_shape)


#: torch's counter knows the CUDA SDPA kernels but not the CPU flash kernel (it counts 0).
CPU_ATTENTION_FLOPS: dict[Any, Callable[..., int]] = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_flash_attention_backward_flop
    ),
}


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (if present) and torch's generators."""
    import random

    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    torch.manual_seed(seed)


def format_bytes(num_bytes: float | None) -> str:
    """``3.52 GiB`` / ``512 MiB``; an em dash for None."""
    if num_bytes is None:
        return "—"
    if num_bytes >= GIB:
        return f"{num_bytes / GIB:.2f} GiB"
    return f"{num_bytes / 1024**2:.0f} MiB"


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def log(message: str) -> None:
    """Progress, to stderr: stdout is the report."""
    print(message, file=sys.stderr, flush=True)


def median(values: list[float]) -> float | None:
    """The median, or None for no values."""
    return statistics.median(values) if values else None


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.2f}" if seconds >= 1 else f"{seconds:.3f}"


def fmt_number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "—" if value is None else f"{value / scale:,.{digits}f}"


def fmt_percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{100 * fraction:.0f}%"


def fmt_ratio(numerator: float | None, denominator: float | None) -> str:
    if numerator is None or denominator is None or denominator == 0:
        return "—"
    return f"{numerator / denominator:.2f}×"


# ---------------------------------------------------------------------------------------------
# other processes: memory, descendants, CPU time (from /proc)
# ---------------------------------------------------------------------------------------------


def process_status_bytes(pid: int, field: str) -> int | None:
    """A ``kB`` field (``VmHWM``, ``VmRSS``) of ``/proc/PID/status`` in bytes, or None when the
    process is gone (a zombie has no memory fields) or /proc is missing."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _proc_children() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process /proc shows now."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def process_tree(pid: int | None = None) -> list[int]:
    """``pid`` (default: this process) and all its descendants alive now."""
    root = os.getpid() if pid is None else pid
    children = _proc_children()
    tree, pending = [], [root]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, []))
    return tree


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds of a process and its living descendants, e.g. worker processes that an
    embedder keeps (``time.process_time`` counts only the calling process's threads).
    Resolution: one clock tick (10 ms); a descendant that exited is no longer counted."""
    return sum(process_cpu_seconds(member) for member in process_tree(pid))


def package_versions() -> dict[str, str]:
    """The versions of Python and of the packages the benchmarks' figures depend on."""
    from importlib import metadata

    versions = {"python": sys.version.split()[0]}
    for package in ("numpy", "torch", "transformers", "faiss-cpu", "sentence-transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions

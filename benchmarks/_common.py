"""Helpers shared by the benchmarks: the reference model, memory, guarded workers, FLOPs, tables.

The reference is ``retro-pytorch`` 0.3.9 (installed with ``--no-deps``). Its package ``__init__``
imports ``autofaiss``, which we do not install, so :func:`load_reference_retro` loads only its
model module, ``retro_pytorch/retro_pytorch.py``, straight from site-packages. The one name that
module takes from ``retro_pytorch.retrieval`` (``BERT_VOCAB_SIZE``) is served by a stand-in module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import sys
import threading
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
# guarding a worker process
# ---------------------------------------------------------------------------------------------

#: A worker's exit status when its memory guard stopped it.
EXIT_OUT_OF_MEMORY = 86
#: Stop a worker when the machine has less than this available, whatever its own RSS.
MACHINE_MEMORY_FLOOR = 1 * GIB

#: What a worker's task has established so far (baseline RSS, parameter count): reported even
#: when the task is stopped for memory half-way.
PROGRESS: dict[str, Any] = {}


def is_allocation_failure(error: BaseException) -> bool:
    """Whether torch or Python could not allocate memory (the address-space limit was hit)."""
    if isinstance(error, MemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in message or "not enough memory" in message
    )


class MemoryGuard(threading.Thread):
    """Watchdog: exit with :data:`EXIT_OUT_OF_MEMORY` when RSS passes the limit.

    Polls every 50 ms, and also stops the worker when the whole machine runs short (other
    work shares it). :meth:`limit_address_space` adds a hard backstop for allocations too large
    and too fast for polling to see.
    """

    def __init__(self, limit_bytes: int, out_path: Path) -> None:
        super().__init__(daemon=True)
        self.limit_bytes = limit_bytes
        self.out_path = out_path
        self.max_seen = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        polls = 0
        while not self._stopped.wait(0.05):
            rss = current_rss_bytes()
            self.max_seen = max(self.max_seen, rss)
            if rss > self.limit_bytes:
                self._abort(f"RSS {format_bytes(rss)} passed the limit")
            polls += 1
            available = available_memory_bytes() if polls % 4 == 0 else None
            if available is not None and available < MACHINE_MEMORY_FLOOR:
                self._abort(f"machine had only {format_bytes(available)} available")

    def _abort(self, reason: str) -> None:
        payload = {**PROGRESS, "status": "oom", "detail": reason, "peak_rss": self.max_seen}
        write_json(self.out_path, payload)
        os._exit(EXIT_OUT_OF_MEMORY)

    def stop(self) -> None:
        self._stopped.set()


def limit_address_space(limit_bytes: int) -> None:
    """Backstop to :class:`MemoryGuard`: cap the address space at its size now plus the limit.

    An allocation too large and too fast for polling to catch then fails inside torch, and the
    worker reports it as out of memory.
    """
    cap = virtual_size_bytes() + limit_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, default=list))


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


def jsonable(value: Any) -> Any:
    """Tuples to lists, recursively, so that a value round-trips through JSON unchanged."""
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


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
# watching another process (added for benchmarks/retrieval.py)
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


class WatchedRun:
    """What :func:`run_watched` saw of one child process (and the processes it started)."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.wall_s = 0.0
        #: The child's own peak RSS: the last ``VmHWM`` read while it ran (polled), or None.
        self.peak_rss: int | None = None
        #: ``ru_maxrss`` of the child from ``wait4`` (bytes): at least the parent's RSS at the
        #: fork, see :func:`peak_rss_bytes`; a cross-check of ``peak_rss``.
        self.ru_maxrss: int | None = None
        self.timed_out = False
        #: True when ``stop_when`` asked for the child to be stopped (it was sent SIGTERM).
        self.stopped = False
        #: Seconds from the start to the poll at which ``stop_when`` answered True.
        self.stopped_at_s: float | None = None
        #: ``VmHWM`` read at that poll, before the child was stopped.
        self.peak_rss_at_stop: int | None = None
        #: The largest sum of ``VmRSS`` over the child and its descendants seen at one poll
        #: (the memory of the whole job when the child starts worker processes), or None.
        self.tree_peak_rss: int | None = None
        #: The same, up to the poll at which ``stop_when`` answered True.
        self.tree_peak_rss_at_stop: int | None = None
        #: Largest number of processes seen in the tree at one poll.
        self.tree_processes = 0


def run_watched(
    command: list[str],
    *,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
    stdout: Any = None,
    stderr: Any = None,
    timeout_s: float | None = None,
    poll_s: float = 0.05,
    stop_when: Callable[[], bool] | None = None,
    stop_poll_s: float = 0.25,
    tree_poll_s: float = 0.1,
) -> WatchedRun:
    """Run ``command`` to its end, polling its ``VmHWM`` every ``poll_s``.

    ``stop_when`` (called every ``stop_poll_s``) may end the child early: when it returns True
    the child's peak so far is recorded and the child is sent SIGTERM (then SIGKILL after 10 s).
    A child past ``timeout_s`` is killed and reported with ``timed_out``. Every
    ``tree_poll_s`` the RSS of the child and all its descendants is summed: ``tree_peak_rss``.
    """
    import subprocess
    import time

    result = WatchedRun()
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
    last_stop_check = last_tree_poll = started
    terminated_at: float | None = None
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid == process.pid:
            process.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not
            result.returncode = process.returncode
            result.ru_maxrss = usage.ru_maxrss * 1024
            break
        hwm = process_status_bytes(process.pid, "VmHWM")
        if hwm is not None:
            result.peak_rss = max(result.peak_rss or 0, hwm)
        now = time.perf_counter()
        if now - last_tree_poll >= tree_poll_s:
            last_tree_poll = now
            members = process_tree(process.pid)
            sizes = [process_status_bytes(member, "VmRSS") for member in members]
            total = sum(size for size in sizes if size is not None)
            if total:
                result.tree_peak_rss = max(result.tree_peak_rss or 0, total)
                result.tree_processes = max(result.tree_processes, len(members))
        if terminated_at is None:
            if timeout_s is not None and now - started > timeout_s:
                result.timed_out = True
                process.kill()
                terminated_at = now
            elif stop_when is not None and now - last_stop_check >= stop_poll_s:
                last_stop_check = now
                if stop_when():
                    result.stopped = True
                    result.stopped_at_s = now - started
                    result.peak_rss_at_stop = result.peak_rss
                    result.tree_peak_rss_at_stop = result.tree_peak_rss
                    process.terminate()
                    terminated_at = now
        elif now - terminated_at > 10:
            process.kill()
        time.sleep(poll_s)
    result.wall_s = time.perf_counter() - started
    return result

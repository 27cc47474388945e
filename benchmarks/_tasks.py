"""The one task runner of the benchmarks: every measurement in a fresh process of its own.

A benchmark script is its own worker. The driver hands each task (a JSON-able dict, or a
dataclass, with a ``kind``) to :meth:`TaskRunner.run`, which starts

    python SCRIPT --worker '{"task": {...}, "timeout_s": ..., "mem_limit_bytes": ...}'
                  --worker-out worker-N.json

waits for it and returns its result: a dict whose ``status`` is ``ok``, ``oom``, ``timeout`` or
``error``, with a ``detail`` for the table where it is not ``ok``, the worker's own ``peak_rss``
(``VmHWM``) and ``ru_maxrss``, and ``wall_s`` as the driver saw it. Tasks run one at a time, so
every peak-memory figure belongs to one task alone, and an identical task runs only once.

In the worker, :func:`serve` runs the script's handler for the task's kind under a
:class:`MemoryGuard` (RSS past the limit, or the machine nearly out of memory: the worker stops
and reports ``oom``) and turns an exception into a status, never a traceback in the middle of a
table. The timeout is the driver's: a worker past it is killed with its descendants.

:func:`run_watched` runs any other command to its end (the CLI stages of ``retrieval.py``),
watching its memory and that of its descendants from outside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from _common import (
    GIB,
    REPO_ROOT,
    available_memory_bytes,
    current_rss_bytes,
    format_bytes,
    peak_rss_bytes,
    process_status_bytes,
    process_tree,
    ru_maxrss_bytes,
    virtual_size_bytes,
)

#: Environment of every child: nothing may reach for the network.
CHILD_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


def child_env() -> dict[str, str]:
    """This process's environment, offline, with the checkout first on ``PYTHONPATH``."""
    env = {**os.environ, **CHILD_ENV}
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    return env


def log_tail(path: Path) -> str:
    """The last line a process wrote to its log, for a table cell."""
    return (path.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]


# ---------------------------------------------------------------------------------------------
# the driver's side
# ---------------------------------------------------------------------------------------------


class TaskRunner:
    """Runs one script's tasks, each in a fresh process of that script, one at a time.

    ``scratch`` keeps each worker's result (``worker-N.json``) and output (``worker-N.log``);
    without one a temporary folder is used and removed by :meth:`close`.
    """

    def __init__(
        self,
        script: str | Path,
        *,
        timeout_s: float,
        mem_limit_gb: float,
        scratch: Path | None = None,
    ) -> None:
        self.script = Path(script).resolve()
        self.timeout_s = timeout_s
        self.mem_limit_gb = mem_limit_gb
        self._temporary = (
            tempfile.TemporaryDirectory(prefix="retro-bench-") if scratch is None else None
        )
        self.scratch = Path(self._temporary.name) if self._temporary else Path(scratch)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._results: dict[str, dict[str, Any]] = {}
        self._started = 0

    def run(self, task: Any, *, mem_limit_gb: float | None = None) -> dict[str, Any]:
        """The task's result (see the module's docstring); ``mem_limit_gb`` overrides the
        runner's limit for this task. An identical task (and limit) is not run again."""
        limit_gb = self.mem_limit_gb if mem_limit_gb is None else mem_limit_gb
        request = {
            "task": asdict(task) if is_dataclass(task) else dict(task),
            "timeout_s": self.timeout_s,
            "mem_limit_bytes": int(limit_gb * GIB),
        }
        key = json.dumps(request, sort_keys=True, default=list)
        if key not in self._results:
            self._results[key] = self._spawn(request, limit_gb)
        return dict(self._results[key])

    def _spawn(self, request: dict[str, Any], limit_gb: float) -> dict[str, Any]:
        self._started += 1
        out_path = self.scratch / f"worker-{self._started}.json"
        log_path = self.scratch / f"worker-{self._started}.log"
        out_path.unlink(missing_ok=True)  # a result from an earlier run in a kept folder
        command = [sys.executable, str(self.script), "--worker", json.dumps(request, default=list)]
        command += ["--worker-out", str(out_path)]
        started = time.perf_counter()
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                command, env=child_env(), stdout=log_file, stderr=subprocess.STDOUT
            )
            try:
                returncode = process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                kill_tree(process)
                detail = f"timeout (> {self.timeout_s:g} s)"
                return {"status": "timeout", "detail": detail, "wall_s": self.timeout_s}
            except BaseException:  # Ctrl-C: no worker outlives the driver
                kill_tree(process)
                raise
        wall_s = time.perf_counter() - started
        result = json.loads(out_path.read_text()) if out_path.exists() else None
        if result is None and returncode == -signal.SIGKILL:
            detail = "killed by SIGKILL (the kernel's OOM killer?)"
            return {"status": "oom", "detail": detail, "wall_s": wall_s}
        if result is None:
            detail = f"worker exited {returncode}: {log_tail(log_path)}"
            return {"status": "error", "detail": detail, "wall_s": wall_s}
        if result.get("status") == "oom":
            result["detail"] = f"out of memory (> {limit_gb:g} GiB; {result.get('detail', '')})"
        result["wall_s"] = wall_s
        return result

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> TaskRunner:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def kill_tree(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a child and every process it started, then reap the child."""
    for pid in process_tree(process.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):  # gone meanwhile
            os.kill(pid, signal.SIGKILL)
    process.wait()


# ---------------------------------------------------------------------------------------------
# the worker's side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worker:
    """What a task knows of the process it runs in: when it started and its limits."""

    started: float
    timeout_s: float
    mem_limit_bytes: int

    def seconds_left(self, share: float = 1.0) -> float:
        """``share`` of the timeout less the seconds this worker has run so far."""
        return self.timeout_s * share - (time.perf_counter() - self.started)


#: A task handler: the task (as the driver passed it) and its worker, to the result's fields.
Handler = Callable[[dict[str, Any], Worker], dict[str, Any]]


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """The hidden options by which :class:`TaskRunner` starts a script as a worker."""
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)


def serve(args: argparse.Namespace, handlers: Mapping[str, Handler]) -> int:
    """The worker: run the one task of ``--worker`` under a memory guard, write its result."""
    request = json.loads(args.worker)
    worker = Worker(time.perf_counter(), request["timeout_s"], request["mem_limit_bytes"])
    task = request["task"]
    guard = MemoryGuard(worker.mem_limit_bytes, args.worker_out)
    guard.start()
    try:
        result = handlers[task["kind"]](task, worker)
    except Exception as error:  # reported in the table, never raised past the worker
        traceback.print_exc()  # into the worker's log
        result = failure(error)
    result = {**PROGRESS, **result}
    result.setdefault("status", "ok")
    result["peak_rss"] = max(peak_rss_bytes(), guard.max_seen)
    result["ru_maxrss"] = ru_maxrss_bytes()
    guard.stop()
    write_json(args.worker_out, result)
    return 0


def failure(error: Exception) -> dict[str, Any]:
    """The status and one-line detail of a task that raised."""
    message = f"{type(error).__name__}: {error}".splitlines()[0]
    if not is_allocation_failure(error):
        return {"status": "error", "detail": message}
    if _address_space_capped:
        return {"status": "oom", "detail": "an allocation would pass the address-space cap"}
    return {"status": "oom", "detail": message}


# ---------------------------------------------------------------------------------------------
# guarding a worker
# ---------------------------------------------------------------------------------------------


#: A worker's exit status when its memory guard stopped it.
EXIT_OUT_OF_MEMORY = 86
#: Stop a worker when the machine has less than this available, whatever its own RSS.
MACHINE_MEMORY_FLOOR = 1 * GIB

#: What a worker's task has established so far (baseline RSS, parameter count): reported even
#: when the task is stopped for memory half-way.
PROGRESS: dict[str, Any] = {}

#: Whether :func:`limit_address_space` capped this worker (a failed allocation then means that).
_address_space_capped = False


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
    global _address_space_capped
    cap = virtual_size_bytes() + limit_bytes
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    _address_space_capped = True


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, default=list))


# ---------------------------------------------------------------------------------------------
# watching any other command
# ---------------------------------------------------------------------------------------------


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

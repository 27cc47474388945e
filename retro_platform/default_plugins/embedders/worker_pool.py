"""The worker processes of the ``sentence-transformers`` embedder: each holds the model and
embeds a share of every large call.

Why it exists: on the CPU, data parallelism over processes beats one process whose threads
share each matrix product. On two cores shared with other jobs, two worker processes of one
thread each kept 76–80 chunks/s where one process with two threads fell to 27 (about 2.8x, with
identical vectors): an intra-op parallel matrix product waits for its slowest thread, so a
thread that another job descheduled stalls the whole team, while a process does not wait for
the other. With the cores to ourselves the two were about even (162 chunks/s with two workers,
169 with one process of two threads). The measurements are in docs/plugins.md (the
``workers = "auto"`` note of ``sentence-transformers``), and in the docstrings of
:mod:`.sentence_transformer` and its ``_resolve_workers``.

Why it is home-made: each worker is a fresh interpreter started with ``python -c`` that talks
pickle over its stdin and stdout, so a user's ``__main__`` is never re-run, as multiprocessing's
spawn start method (which sentence-transformers' own ``start_multi_process_pool`` uses) would.
The pool knows nothing of sentence-transformers: the embedder hands it the module-level
functions that load the model and encode texts, which reach each worker pickled by name. Like
the embedder, it imports torch only inside a worker, never when the plugin registers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from retro_platform.errors import ConfigError
from retro_platform.parent_watch import exit_with_parent

#: Loads the model in a worker from the embedder's settings; a :class:`ConfigError` it raises
#: reaches the caller as one.
LoadModel = Callable[[dict[str, Any]], Any]

#: Embeds texts with the loaded model: ``(model, texts, settings) -> float32 vectors``.
Encode = Callable[[Any, list[str], dict[str, Any]], np.ndarray]


class _WorkerPool:
    """Worker processes that each hold the model and embed a share of every call.

    Each worker is a fresh interpreter (``python -c``, so a user's ``__main__`` is never
    re-run, unlike multiprocessing's spawn) that talks pickle over its stdin and stdout. A
    worker exits when its stdin closes: at :meth:`close`, or when this process ends.

    ``load`` and ``encode`` must be module-level functions: they are pickled by name.
    """

    def __init__(
        self,
        settings: dict[str, Any],
        workers: int,
        threads: int,
        load: LoadModel,
        encode: Encode,
    ) -> None:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(path for path in sys.path if path),
        }
        command = [sys.executable, "-c", f"from {__name__} import _serve; _serve()"]
        self._procs = [
            subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            for _ in range(workers)
        ]
        self._finalizer = weakref.finalize(self, _stop, self._procs)
        try:
            for proc in self._procs:
                _send(proc, (load, encode, {**settings, "threads": threads}))
            for proc in self._procs:
                _receive(proc)  # "ready", or the worker's one-line error
        except BaseException:
            self.close()
            raise

    def map(self, shards: list[list[str]]) -> list[np.ndarray]:
        """Each worker embeds one shard; their results, in order."""
        try:
            for proc, shard in zip(self._procs, shards, strict=True):
                _send(proc, shard)
            return [_receive(proc) for proc in self._procs]
        except BaseException:
            self.close()  # a worker's stream is out of step now: never reuse it
            raise

    def close(self) -> None:
        self._finalizer()


def _send(proc: subprocess.Popen, message: Any) -> None:
    try:
        pickle.dump(message, proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        proc.stdin.flush()
    except (BrokenPipeError, OSError):
        raise RuntimeError(_died(proc)) from None


def _receive(proc: subprocess.Popen) -> Any:
    try:
        kind, value = pickle.load(proc.stdout)
    except (EOFError, OSError, pickle.UnpicklingError):
        raise RuntimeError(_died(proc)) from None
    if kind == "config-error":
        raise ConfigError(value)
    if kind == "error":
        raise RuntimeError(f"an embedding worker failed: {value}")
    return value


def _died(proc: subprocess.Popen) -> str:
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        code = None
    return f"an embedding worker process stopped (exit code {code}); its error is above"


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            proc.stdout.close()


def _serve() -> None:
    """The loop of a worker process: settings, then texts in and vectors out until EOF."""
    # a busy worker would not see EOF until it has finished its texts: a parent killed by a
    # signal that left no time for _WorkerPool.close must not leave it embedding
    exit_with_parent()
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the protocol stream
    sys.stdout = sys.stderr
    protocol_in = sys.stdin.buffer

    def reply(kind: str, value: Any) -> None:
        pickle.dump((kind, value), protocol_out, protocol=pickle.HIGHEST_PROTOCOL)
        protocol_out.flush()

    # unpickling load and encode imports the embedder's module (not its backend)
    load, encode, settings = pickle.load(protocol_in)
    try:
        import torch  # lazy: a plugin imports its backend when used, not when it registers

        torch.set_num_threads(settings["threads"])
        model = load(settings)
    except ConfigError as error:
        reply("config-error", str(error))
        return
    except Exception as error:  # reported in the parent, which stops
        reply("error", f"{type(error).__name__}: {' '.join(str(error).split())}")
        return
    reply("ready", None)
    while True:
        try:
            texts = pickle.load(protocol_in)
        except EOFError:
            return
        try:
            reply("ok", encode(model, texts, settings))
        except Exception as error:
            reply("error", f"{type(error).__name__}: {' '.join(str(error).split())}")

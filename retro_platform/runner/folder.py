"""A run folder and what it holds: ``[train] output/<name>-<key>``, where the key is a hash of
the resolved configuration, and the files that outlive the run (see
:mod:`retro_platform.runner.run` for how a run uses them to resume or skip)."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from retro_platform.config import Experiment
from retro_platform.errors import ConfigError, RunInUseError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
from retro_platform.store.fingerprints import fingerprint, short

#: Keys that change how a run is carried out, never its result: a run folder outlives them.
RUNTIME_KEYS = (
    "mlflow.",
    "train.threads",
    "train.device",
    "train.log_every",
    "train.checkpoint_every",
    "store.max_document_bytes",  # the corpus's documents are not part of the key either
)

DONE = "done.json"
#: Files in a run folder that outlive the run: its per-chunk validation figures (the
#: comparison of a sweep's points is built from them) and its leakage table.
CHUNK_FIGURES = Path("eval") / "chunks.npz"
LEAKAGE_CSV = Path("leakage") / "leakage.csv"


@dataclass(frozen=True)
class RunOutcome:
    """What one point of an experiment gave: its MLflow run and final metrics."""

    name: str
    run_id: str
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    #: True when the point had finished earlier and nothing was done now.
    skipped: bool = False
    #: ``[train] neighbours``: what the model was given, "retrieved", "none" or "shuffled".
    neighbours: str = "retrieved"


def run_key(params: dict[str, str]) -> str:
    """The part of a run folder's name that identifies the configuration."""
    identity = {k: v for k, v in params.items() if not k.startswith(RUNTIME_KEYS)}
    return short(fingerprint(config=identity))


def run_folder(experiment: Experiment, params: dict[str, str]) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment.experiment.name).strip("-") or "run"
    return experiment.train.output / f"{slug}-{run_key(params)}"


def check_output(experiment: Experiment) -> None:
    """Check, before any work and writing nothing, that ``[train] output`` can hold run
    folders: a file there, or a folder this process may not write, is one line now, not a
    traceback once the retrieval stages are done."""
    output = experiment.train.output
    existing = next(folder for folder in (output, *output.parents) if folder.exists())
    if not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is not writable"
    else:
        return
    raise ConfigError(
        f"cannot create run folders in {output} ([train] output): {reason}; "
        "set [train] output to a writable folder"
    )


#: The file in a run folder that the process training it holds locked.
RUN_LOCK = "run.lock"


@contextmanager
def training_alone(run_dir: Path, hint_file: str) -> Iterator[None]:
    """Hold the run folder's lock (``flock`` on :data:`RUN_LOCK`) while this process trains
    it: a second ``run`` of the same configuration (started twice, or again while leftover
    processes still train) would train the same folder and MLflow run at once, logging every
    step twice and each deleting the other's half-written checkpoint. It gets a one-line
    :class:`RunInUseError` instead. The kernel lets the lock go when the process ends, however
    it ends. Where ``flock`` does not exist (Windows) nothing is locked."""
    if fcntl is None:
        yield
        return
    path = run_dir / RUN_LOCK
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
            raise RunInUseError(
                f"run folder {run_dir} is being trained by another process"
                f"{f' ({holder})' if holder else ''}: wait for it to end or stop it, then "
                f"run: retro-platform run {hint_file} (it resumes, or finds the run finished)"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the flock

"""A run folder and what it holds: ``[train] output/<name>-<key>``, where the key is a hash of
the resolved configuration, and the files that outlive the run (see
:mod:`retro_platform.runner.run` for how a run uses them to resume or skip)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from retro_platform.config import Experiment
from retro_platform.errors import ConfigError
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

"""Training checkpoints: written atomically, read back without unpickling any object.

A checkpoint is one ``torch.save`` file of tensors and plain values only (dicts, lists,
tuples, numbers, strings): the model, the optimizer and the scheduler states, the step, every
random generator's state, the model's configuration and the settings the run's trajectory
depends on. It is read with ``torch.load(weights_only=True)``, which refuses anything else, so
opening a checkpoint from elsewhere can never run code.

The file is written beside its final name, flushed to disk, then renamed over the old one: a
run killed at any moment leaves either the previous checkpoint or the new one, never half of
one. A full disk (or a file size limit) is a one-line error that keeps the previous checkpoint.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retro_platform.atomic import atomic_destination, stale_partials
from retro_platform.errors import ConfigError, RetroPlatformError

#: The checkpoint of a run, in its folder.
CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 1


class CheckpointError(RetroPlatformError):
    """A checkpoint file that cannot be read safely (corrupt, or holding pickled objects)."""


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where the checkpoint of the run in ``run_dir`` lives."""
    return Path(run_dir) / CHECKPOINT_NAME


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename, fsync folder)."""
    path = Path(path)
    for stale in stale_partials(path):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    then = "training resumes from the last checkpoint saved"
    # through a Python file: a full disk is then an OSError behind torch's RuntimeError
    with atomic_destination(path, then) as temporary, open(temporary, "wb") as handle:
        torch.save(state, handle)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``weights_only=True``.

    Raises:
        CheckpointError: the file is unreadable, or holds anything but tensors and plain
            values (it is refused, not unpickled).
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):  # not a refused object: bytes torch.save never wrote
            raise CheckpointError(
                f"checkpoint {path} is unreadable (not a torch.save archive); delete it to start over"
            ) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} holds pickled objects{what}, not only tensors and plain "
            "values; refused, since loading it could run code: use a checkpoint written by "
            "retro-platform"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({first[:160]}); delete it to start over"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not a retro-platform training checkpoint (format {FORMAT})"
        )
    return state


def check_compatible(
    state: dict[str, Any],
    model_config: dict[str, Any],
    settings: dict[str, Any],
    path: Path,
) -> None:
    """Refuse to resume from a checkpoint of another model shape or other run settings.

    Raises:
        ConfigError: one line naming the first differences and what to do.
    """
    fix = f"use another [train] output folder, or delete {path.parent} to start this run over"
    for what, saved, current in (
        ("model", state.get("model_config", {}), model_config),
        ("settings", state.get("settings", {}), settings),
    ):
        differences = [
            f"{key} = {_plain(saved.get(key))!r} there, {_plain(current.get(key))!r} now"
            for key in sorted(set(saved) | set(current))
            if _plain(saved.get(key)) != _plain(current.get(key))
        ]
        if differences:
            kind = "a different model" if what == "model" else "different run settings"
            shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
            raise ConfigError(f"checkpoint {path} is of {kind} ({shown}): {fix}")


def _plain(value: Any) -> Any:
    """Tuples and lists compare equal (what a checkpoint gives back is not always the same)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------
# random generators, as tensors and plain values


def rng_state() -> dict[str, Any]:
    """Every random generator's state: torch (CPU and CUDA), numpy's global one, Python's."""
    version, mt, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {
            "version": version,
            "state": torch.tensor(mt, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put every random generator back to what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # a run resumed on a machine with fewer GPUs restores those it has
        for device, generator in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator, device)
    saved = state["numpy"]
    np.random.set_state(
        (
            saved["name"],
            saved["keys"].numpy().astype(np.uint32),
            saved["position"],
            saved["has_gauss"],
            saved["cached"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))

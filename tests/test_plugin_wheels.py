"""The platform and the ScaNN plugin as a user gets them: wheels built from this checkout and
installed (not editable) into a fresh virtual environment, their dependencies from the package
index, then a reduced experiment with ``retriever.name = "scann"`` run to a finished MLflow run.

The slowest test in the suite (about two minutes, most of it pip unpacking torch), and the only
one that proves the wheels are complete: package data, migrations and entry points included.
"""

from __future__ import annotations

import importlib.metadata
import os
import sqlite3
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.limits import HANG_S
from tests.runner.helpers import runs_of, tiny_experiment

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[1]
SCANN = ROOT / "plugins" / "retro-platform-scann"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=HANG_S, **kwargs)
    assert done.returncode == 0, f"{' '.join(command[:4])} ...:\n{done.stdout}\n{done.stderr}"
    return done


def test_wheels_install_into_a_fresh_environment_and_run_with_scann(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run(
        [
            *pip,
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(ROOT),
            str(SCANN),
        ]
    )
    built = sorted(path.name.split("-")[0] for path in wheels.glob("*.whl"))
    assert built == ["retro_platform", "retro_platform_scann"]

    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # the torch this suite runs with (a CPU build), so that pip does not fetch a CUDA one;
    # no byte-compiling: it doubles the install time and nothing here needs it
    torch = importlib.metadata.version("torch").split("+")[0]
    run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            f"torch=={torch}",
            *map(str, sorted(wheels.glob("*.whl"))),
        ]
    )

    experiment = tiny_experiment(
        tmp_path / "experiment",
        retriever={"name": "scann", "num_leaves": 8, "leaves_to_search": 4},
        train={"steps": 4, "checkpoint_every": 4},
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RETRO_"))}
    where = run(
        [
            str(python),
            "-c",
            "import retro_platform, retro_platform_scann as s; "
            "print(retro_platform.__file__); print(s.__file__)",
        ],
        env=environ,
        cwd=tmp_path,
    )
    assert all(line.startswith(str(env)) for line in where.stdout.splitlines()), where.stdout
    run(
        [str(env / "bin" / "retro-platform"), "run", str(experiment), "--no-progress"],
        env=environ,
        cwd=tmp_path,
    )

    [tracked] = runs_of(experiment)
    assert tracked.info.status == "FINISHED"
    tags = tracked.data.tags
    assert tags["retro.retriever"] == "scann"
    assert tags["retro.retriever.distribution"] == "retro-platform-scann"
    assert tags["retro.retriever.version"] == "0.1.0"
    with sqlite3.connect(tmp_path / "experiment" / "store" / "retro.db") as db:
        [(made_by,)] = db.execute("SELECT plugin FROM vector_indexes").fetchall()
    assert '"distribution": "retro-platform-scann"' in made_by

"""The command line has OpenMP threads sleep while they wait, unless the environment says
otherwise, and says so before torch (whose OpenMP runtime reads it once, as it loads) is
imported. See docs/experiment-file.md, "CPU threads on shared cores"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, sys
import retro_platform.cli
print(os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


@pytest.mark.parametrize(("given", "used"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_command_line_sets_a_sleeping_wait_policy_before_torch_loads(
    given: str | None, used: str
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                           text=True, timeout=120, check=True)  # fmt: skip
    assert probe.stdout.split() == [used, "False"]

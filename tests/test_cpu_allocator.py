"""keep_freed_memory: a large block freed and allocated again is not mapped and zeroed anew.

Measured by counting minor page faults (the kernel mapping a fresh page), not by timing: with
glibc's default, every 64 MiB allocation is a fresh mmap and faults on each of its pages.
Each case runs in a subprocess because the setting is process-wide.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from retro_platform.cpu_allocator import OPT_OUT_VARIABLE

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the setting exists only with glibc on Linux",
)

PROBE = """
import json, resource, sys, torch
from retro_platform.cpu_allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
# 64 MiB (over glibc's 32 MiB mmap threshold), allocated, touched and freed: the heap grows for
# a few rounds (a freed block sits in a bin, a little too small for the next aligned request)
# and then settles; up to 6 rounds were seen
for _ in range(16):
    torch.ones(16 * 2**20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    torch.ones(16 * 2**20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""

PAGES_PER_BLOCK = 64 * 2**20 // 4096


def probe(mode: str, **env: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return json.loads(completed.stdout)


def test_system_malloc_maps_every_large_block_again():
    result = probe("system")
    assert result["faults"] > 2 * PAGES_PER_BLOCK  # three blocks, (almost) every page faults


def test_kept_memory_is_reused_without_page_faults():
    result = probe("keep")
    assert result["applied"]
    assert result["faults"] < PAGES_PER_BLOCK // 10


def test_opt_out_variable_leaves_malloc_alone():
    result = probe("keep", **{OPT_OUT_VARIABLE: "1"})
    assert not result["applied"]
    assert result["faults"] > 2 * PAGES_PER_BLOCK

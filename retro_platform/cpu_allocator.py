"""Keep freed memory in the process during CPU training (glibc only).

glibc's ``malloc`` serves every block over 32 MiB with a fresh ``mmap`` and hands it back on
``free``. A training step allocates and frees its large activations, logits and gradients
every step, so each step pays the kernel to map and zero the same gigabytes again: on the
2-core machines this project is measured on, writing into freshly mapped memory runs at about
4 GB/s, and that page-fault time was 8% of a small training step and 16% of the seed
configuration's (``benchmarks/train_step.py`` measures it: the ``allocator`` rows). Telling
glibc to take every block from its heap and not to trim the heap back keeps those pages mapped
from one step to the next. The price is memory held but not in use: glibc's heap fragments
(a block freed and requested again can take a few copies of itself before the heap settles),
so the benchmark reports peak RSS with and without the setting. It matters most for a run
that checkpoints activations to fit a long sequence: at 8,192 tokens such a run peaked at
11.1 GiB with the setting against 7.6 GiB without it. That run has asked for memory over
speed (``checkpoint_activations=True``), so it leaves malloc alone.

This is a process-wide setting, so the library never applies it on import: the commands that
train (``retro-platform run``, and the benchmark for both implementations) call
:func:`keep_freed_memory` unless they checkpoint activations. Set
``RETRO_PLATFORM_SYSTEM_MALLOC=1`` to leave malloc alone in every case.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT_VARIABLE = "RETRO_PLATFORM_SYSTEM_MALLOC"

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# the trim threshold is an int: the most it takes is about 2 GiB of free heap kept at the top
_KEEP_BYTES = 2**31 - 1


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory mapped for reuse; return whether the setting took effect.

    Does nothing (and returns False) off Linux, with a C library other than glibc (musl, macOS),
    or when ``RETRO_PLATFORM_SYSTEM_MALLOC`` is set to a true value.
    """
    if os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success: never mmap, and never trim less than _KEEP_BYTES back
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))

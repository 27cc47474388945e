"""Honest evaluation: validation loss and bits per byte with retrieval on and off, the paper's
leakage analysis, and the copy ceiling (what retrieval could gain by copying, at most). Sample
generations live in :mod:`retro_platform.generation`."""

from __future__ import annotations

from retro_platform.evaluation.bpb import EvalResult, evaluate
from retro_platform.evaluation.copy_ceiling import CeilingRow, copy_ceiling
from retro_platform.evaluation.leakage import (
    LeakageRow,
    leakage_table,
    plot_leakage,
    write_leakage_csv,
)
from retro_platform.evaluation.overlap import overlap_ratios

__all__ = [
    "CeilingRow",
    "EvalResult",
    "LeakageRow",
    "copy_ceiling",
    "evaluate",
    "leakage_table",
    "overlap_ratios",
    "plot_leakage",
    "write_leakage_csv",
]

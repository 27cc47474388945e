"""Honest evaluation: validation loss and bits per byte with retrieval on and off, the paper's
leakage analysis, the copy ceiling (what retrieval could gain by copying, at most), and sample
generations with autoretrieval."""

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
from retro_platform.evaluation.samples import Sample, generate_samples, samples_markdown

__all__ = [
    "CeilingRow",
    "EvalResult",
    "LeakageRow",
    "Sample",
    "copy_ceiling",
    "evaluate",
    "generate_samples",
    "leakage_table",
    "overlap_ratios",
    "plot_leakage",
    "samples_markdown",
    "write_leakage_csv",
]

"""The comparison a sweep over ``train.neighbours`` logs to its parent run: every point's
validation bits per byte by how much a chunk overlaps its retrieved neighbours (the paper's
Figure 6; :mod:`retro_platform.evaluation.comparison`), as CSV, markdown and a PNG.

Runs without retrieved neighbours (the baseline, the shuffled control) are bucketed by the
overlaps of the point with retrieved neighbours that matches their other swept values (the
same seed, the same retriever), else of the first such point. Each point's figures are read
from its run folder, so a point that finished earlier counts too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retro_platform.atomic import write_text_atomic
from retro_platform.config.sweep import SweepPoint
from retro_platform.evaluation.comparison import (
    ChunkFigures,
    ComparedRun,
    compare,
    comparison_markdown,
    gain_split,
    plot_comparison,
    reference_overlap,
    write_comparison_csv,
)
from retro_platform.runner.folder import CHUNK_FIGURES, RunOutcome
from retro_platform.tracking.listing import (
    COMPARISON_CSV,
    COMPARISON_MARKDOWN,
    COMPARISON_PNG,
    COMPARISON_TAG,
)

if TYPE_CHECKING:
    from retro_platform.evaluation.comparison import Comparison, GainSplit

NEIGHBOURS_KEY = "train.neighbours"


def log_comparison(
    points: Sequence[SweepPoint],
    outcomes: Sequence[RunOutcome],
    parent: Any,
    sweep_dir: Path,
    edges: Sequence[float],
    log: Callable[[str], None] = print,
) -> str | None:
    """Write the comparison of a sweep's points into ``sweep_dir`` and log it to the parent
    run (a :class:`~retro_platform.tracking.run.TrackedRun`); return its markdown (the
    parent's description shows it: :mod:`retro_platform.runner.results`), or None when the
    sweep does not compare neighbours or a point's figures are missing (said through
    ``log``)."""
    made = compare_points(points, outcomes, edges, log)
    if made is None:
        return None
    comparison, splits = made
    markdown = comparison_markdown(comparison, splits)
    files = [
        write_comparison_csv(comparison, sweep_dir / COMPARISON_CSV),
        write_text_atomic(sweep_dir / COMPARISON_MARKDOWN, markdown),
        plot_comparison(comparison, sweep_dir / COMPARISON_PNG),
    ]
    for path in files:
        parent.log_artifact(path, Path(COMPARISON_MARKDOWN).parent.as_posix())
    parent.set_tags({COMPARISON_TAG: COMPARISON_MARKDOWN})
    return markdown


def compare_points(
    points: Sequence[SweepPoint],
    outcomes: Sequence[RunOutcome],
    edges: Sequence[float],
    log: Callable[[str], None] = print,
) -> tuple[Comparison, dict[str, GainSplit]] | None:
    """The :class:`~retro_platform.evaluation.comparison.Comparison` of the points, labelled
    by their run names, and the gain split of each retrieved point over its baseline; None
    (and a line through ``log``) when there is nothing to compare."""
    kinds = [point.experiment.train.neighbours for point in points]
    if len(set(kinds)) < 2:
        return None
    if "retrieved" not in kinds:
        log("no comparison by neighbour overlap: no point has retrieved neighbours")
        return None
    figures = []
    for outcome in outcomes:
        path = outcome.run_dir / CHUNK_FIGURES
        if not path.exists():
            log(
                f"no comparison by neighbour overlap: {outcome.name} kept no per-chunk "
                f"figures ({path} is missing; it finished before runs kept them)"
            )
            return None
        figures.append(ChunkFigures.load(path))

    first_retrieved = kinds.index("retrieved")
    runs, splits = [], {}  # splits: "A over B" -> GainSplit
    for i, (point, outcome) in enumerate(zip(points, outcomes, strict=True)):
        reference = matching_point(points, point, "retrieved")
        reference = first_retrieved if reference is None else reference
        retrieved = kinds[i] == "retrieved"
        runs.append(
            ComparedRun(
                outcome.name,
                figures[i],
                reference_overlap(figures[i], figures[reference]),
                retrieval_off=retrieved and figures[i].chunk_loss_off is not None,
            )
        )
        baseline = matching_point(points, point, "none") if retrieved else None
        if baseline is not None:
            title = f"{outcome.name} over {outcomes[baseline].name}"
            splits[title] = gain_split(figures[i], figures[baseline])
    return compare(runs, edges), splits


def matching_point(points: Sequence[SweepPoint], point: SweepPoint, kind: str) -> int | None:
    """The index of the point of neighbours ``kind`` (``"none"``: the baseline trained without
    retrieval) with the same other swept values as ``point``, or None."""
    same = [
        i
        for i, other in enumerate(points)
        if other.experiment.train.neighbours == kind and _others(other) == _others(point)
    ]
    return same[0] if same else None


def _others(point: SweepPoint) -> dict[str, Any]:
    return {key: value for key, value in point.values.items() if key != NEIGHBOURS_KEY}

"""The training-step benchmark's report: its rows and tables, the notes and the header."""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from typing import Any

from _common import fmt_number, fmt_percent, fmt_ratio, fmt_seconds, format_bytes, markdown_table


@dataclass
class Row:
    """One line of the results table (also what --json writes)."""

    section: str
    label: str
    impl: str
    checkpoint: bool
    retrieval: bool
    mode: str
    batch: int
    seq_len: int
    status: str
    detail: str = ""
    median_s: float | None = None
    times_s: list[float] = field(default_factory=list)
    repeats_done: int = 0
    tokens_per_s: float | None = None
    flops: int | None = None
    flops_device: str | None = None
    flops_detail: str = ""
    flops_per_s: float | None = None
    mfu: float | None = None
    baseline_rss: int | None = None
    peak_rss: int | None = None
    ru_maxrss: int | None = None
    params: int | None = None
    malloc_kept: bool | None = None


# ---------------------------------------------------------------------------------------------
# the tables
# ---------------------------------------------------------------------------------------------


def results_table(rows: list[Row]) -> str:
    headers = [
        "config",
        "implementation",
        "retrieval",
        "pass",
        "batch × seq",
        "n",
        "s/step",
        "tokens/s",
        "GFLOP/step",
        "GFLOP/s",
        "MFU",
        "RSS after build",
        "peak RSS",
        "status",
    ]
    body = []
    for row in rows:
        repeats = (
            "warm-up" if row.status == "ok" and row.repeats_done == 0 else str(row.repeats_done)
        )
        body.append(
            [
                row.section,
                row.label,
                "on" if row.retrieval else "off",
                row.mode,
                f"{row.batch} × {row.seq_len}",
                repeats if row.status == "ok" else "—",
                fmt_seconds(row.median_s),
                fmt_number(row.tokens_per_s, digits=0),
                fmt_number(row.flops, 1e9),
                fmt_number(row.flops_per_s, 1e9),
                fmt_percent(row.mfu),
                format_bytes(row.baseline_rss),
                format_bytes(row.peak_rss),
                row.status if row.status == "ok" else row.detail,
            ]
        )
    return markdown_table(headers, body)


def find_row(rows: list[Row], **match: Any) -> Row | None:
    for row in rows:
        if all(getattr(row, name) == value for name, value in match.items()):
            return row
    return None


STATUS_SHORT = {"oom": "out of memory", "timeout": "timeout", "error": "error"}


def speed_ratio(ours: Row, ref: Row) -> str:
    """ours / reference tokens per second, or which of them did not finish."""
    for name, row in (("ours", ours), ("ref", ref)):
        if row.status != "ok":
            return f"{name}: {STATUS_SHORT.get(row.status, row.status)}"
    return fmt_ratio(ours.tokens_per_s, ref.tokens_per_s)


def memory_ratio(ours: Row, ref: Row) -> str:
    """ours / reference peak RSS; a bound where the reference was stopped for memory."""
    if ours.status == "ok" and ref.status == "oom":
        return "< " + fmt_ratio(ours.peak_rss, ref.peak_rss) + " (ref stopped)"
    if ours.status != "ok" or ref.status != "ok":
        return "—"
    return fmt_ratio(ours.peak_rss, ref.peak_rss)


def on_off_ratio(rows: list[Row], impl: str, section: str, mode: str) -> str:
    """Time with retrieval on / time with retrieval off, for one implementation."""
    pick = {"impl": impl, "section": section, "mode": mode}
    on = find_row(rows, retrieval=True, **pick)
    off = find_row(rows, retrieval=False, **pick)
    return fmt_ratio(on and on.median_s, off and off.median_s)


def ratio_table(rows: list[Row]) -> str:
    """ours / reference speed and memory, and retrieval on / off time, per configuration."""
    headers = [
        "config",
        "pass",
        "retrieval",
        "ours/ref tokens/s",
        "ours/ref peak RSS",
        "on/off time, ours",
        "on/off time, ref",
    ]
    body = []
    for section in ("small", "seed"):
        for mode in ("train", "forward"):
            for retrieval in (True, False):
                pick = {"section": section, "mode": mode, "retrieval": retrieval}
                ours = find_row(rows, impl="ours", **pick)
                ref = find_row(rows, impl="reference", **pick)
                if ours is None or ref is None:
                    continue
                on_off = ["", ""]
                if retrieval:
                    on_off = [
                        on_off_ratio(rows, impl, section, mode) for impl in ("ours", "reference")
                    ]
                body.append(
                    [
                        section,
                        mode,
                        "on" if retrieval else "off",
                        speed_ratio(ours, ref),
                        memory_ratio(ours, ref),
                        *on_off,
                    ]
                )
    for row in rows:
        if row.section != "scaling" or row.impl != "ours":
            continue
        ref = find_row(rows, section="scaling", impl="reference", seq_len=row.seq_len)
        if ref is not None:
            body.append(
                [
                    f"scaling {row.seq_len}",
                    f"train ({row.label})",
                    "on",
                    speed_ratio(row, ref),
                    memory_ratio(row, ref),
                    "",
                    "",
                ]
            )
    return markdown_table(headers, body)


def allocator_table(rows: list[Row]) -> str:
    """Training step with freed memory kept (every other row) against glibc's default malloc."""
    headers = [
        "config",
        "implementation",
        "s/step, kept",
        "s/step, system malloc",
        "speed-up",
        "MFU, kept",
        "MFU, system malloc",
        "peak RSS, kept",
        "peak RSS, system malloc",
    ]
    body = []
    for section in ("small", "seed"):
        for impl in ("ours", "reference"):
            kept = find_row(rows, section=section, impl=impl, mode="train", retrieval=True)
            system = find_row(rows, section=f"allocator {section}", impl=impl)
            if kept is None or system is None:
                continue
            body.append(
                [
                    section,
                    impl,
                    fmt_seconds(kept.median_s),
                    fmt_seconds(system.median_s),
                    fmt_ratio(system.median_s, kept.median_s),
                    fmt_percent(kept.mfu),
                    fmt_percent(system.mfu),
                    format_bytes(kept.peak_rss),
                    format_bytes(system.peak_rss),
                ]
            )
    return markdown_table(headers, body)


def profile_table(profiles: dict[str, dict[str, Any]]) -> str:
    """Median per-step seconds inside the encoder and the CCA modules, and their share."""
    headers = [
        "config",
        "pass",
        "step s",
        "encoder fwd",
        "encoder bwd",
        "CCA fwd",
        "CCA bwd",
        "encoder + CCA share",
    ]
    body = []
    for section, profile in profiles.items():
        if profile.get("status", "ok") != "ok":
            body.append([section, "—", "—", "—", "—", "—", "—", profile.get("detail", "")])
            continue
        for mode in ("train", "forward"):
            steps = profile[mode]
            median = {
                key: statistics.median(step.get(key, 0.0) for step in steps)
                for key in ("step", "encoder_fwd", "encoder_bwd", "cca_fwd", "cca_bwd")
            }
            inside = sum(value for key, value in median.items() if key != "step")
            cells = [median[key] for key in ("encoder_fwd", "encoder_bwd", "cca_fwd", "cca_bwd")]
            if mode == "forward":
                cells[1] = cells[3] = None
            body.append(
                [
                    section,
                    mode,
                    fmt_seconds(median["step"]),
                    *(fmt_seconds(cell) for cell in cells),
                    f"{100 * inside / median['step']:.0f}%",
                ]
            )
    return markdown_table(headers, body)


def result_notes(rows: list[Row]) -> list[str]:
    """What the reader needs to know about how some numbers were obtained."""
    notes = set()
    for row in rows:
        if row.flops_device == "cpu":
            notes.add(
                f"FLOPs of {row.impl} counted by running it once on the CPU, {row.flops_detail}"
            )
        elif row.flops is None and row.flops_detail:
            notes.add(f"FLOPs of {row.impl} not counted: {row.flops_detail}")
        if row.status == "ok" and row.repeats_done < 1:
            notes.add("n = warm-up: no time was left for a timed repeat; the warm-up is shown")
    if any(row.impl == "reference" for row in rows):
        notes.add(
            "the reference passes no `heads` to its encoder and decoder (they use 8 heads): "
            "at heads != 8 (small: 6) it computes 8 x dim_head attention, so more FLOPs"
        )
    return sorted(notes)


def header_lines(machine: list[dict[str, Any]], args: argparse.Namespace, peak: float) -> list[str]:
    first = machine[0]
    samples = "; ".join(
        f"{label} (load {m['load_average_1min']:.1f}): "
        + ", ".join(f"{size}² {rate / 1e9:.0f}" for size, rate in m["matmul_flops_per_s"].items())
        for label, m in zip(("start", "end"), machine, strict=False)
    )
    return [
        "# RETRO training-step benchmark: ours vs retro-pytorch 0.3.9",
        "",
        f"- torch {first['torch']}, {first['threads']} threads (os.cpu_count() = "
        f"{first['cpu_count']}), CPU: {first['cpu']}",
        f"- fp32 matmul GFLOP/s, median per size, 1-min load average in brackets — {samples}; "
        f"MFU denominator (the best of them): {peak / 1e9:.0f} GFLOP/s",
        f"- {args.repeats} timed repeat(s) after 1 warm-up, median; per worker: memory limit "
        f"{args.mem_limit_gb:g} GiB, timeout {args.timeout_s:g} s"
        + ("; --quick (tiny sizes)" if args.quick else ""),
        "- FLOPs: torch.utils.flop_counter, forward (+ backward for train), checkpointing off; "
        "each measurement in its own process (RSS = that process's)",
    ]


def matmul_peak(machine: list[dict[str, Any]]) -> float:
    return max(rate for m in machine for rate in m["matmul_flops_per_s"].values())


def print_report(
    machine: list[dict[str, Any]],
    args: argparse.Namespace,
    rows: list[Row],
    profiles: dict[str, dict[str, Any]],
    wall_s: float,
) -> None:
    print("\n".join(header_lines(machine, args, matmul_peak(machine))))
    print("\n## Results\n")
    print(results_table(rows))
    print("\n## Ratios\n")
    print(ratio_table(rows))
    allocator = allocator_table(rows)
    if allocator.count("\n") > 1:
        print("\n## Allocator: freed memory kept (all rows above) vs glibc's default malloc\n")
        print(allocator)
    if profiles:
        print("\n## Where the time goes (ours, retrieval on; median seconds per step)\n")
        print(profile_table(profiles))
        for name, profile in profiles.items():
            for note in profile.get("notes", []):
                print(f"- {name}: {note}")
            for group, names in profile.get("modules", {}).items():
                print(f"- {name}: {group} = {', '.join(names)}")
    print()
    for note in result_notes(rows):
        print(f"- {note}")
    print(f"\nwall time: {wall_s:.0f} s")

"""The generation benchmark's report: the tokens/s table, the targets of issue 13, where the
cached path's time goes and what retrieval costs per completed chunk."""

from __future__ import annotations

import os
from typing import Any

from _common import cpu_model, fmt_ratio, fmt_seconds, markdown_table, package_versions

#: Issue 13's bars.
CACHED_OVER_RECOMPUTE = 10.0
OURS_OVER_GPT2 = 1.0
RETRIEVAL_ON_OVER_OFF = 1.3
#: The chunk size the retrieval bar is set at.
BAR_CHUNK = 64


def machine_facts() -> dict[str, Any]:
    versions = package_versions()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "versions": versions}


# ---------------------------------------------------------------------------------------------
# reading the results
# ---------------------------------------------------------------------------------------------


def ok_comparisons(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in entry["comparisons"] if c.get("status") == "ok"]


def find(
    results: dict[str, Any], *, main: bool | None = None, chunk: int | None = None, batch: int
) -> dict[str, dict[str, Any]]:
    """The variants (by name) of the comparison at a chunk size and batch, or {}."""
    for entry in results["chunk_sizes"]:
        if main is not None and entry["main"] != main:
            continue
        if chunk is not None and entry["chunk_size"] != chunk:
            continue
        for comparison in ok_comparisons(entry):
            if comparison["batch"] == batch:
                return {v["name"]: v for v in comparison["variants"]}
    return {}


def speedup(fast: dict[str, Any] | None, slow: dict[str, Any] | None) -> float | None:
    """How many times ``fast``'s tokens/s is ``slow``'s."""
    if not fast or not slow or not fast.get("tokens_per_s") or not slow.get("tokens_per_s"):
        return None
    return fast["tokens_per_s"] / slow["tokens_per_s"]


def per_repeat(fast: dict[str, Any] | None, slow: dict[str, Any] | None) -> str:
    """The same ratio repeat by repeat (the two ran one after the other in each repeat)."""
    if not fast or not slow or len(fast["times_s"]) < 2:
        return ""
    rate = lambda v, t: v["new_tokens"] * v["batch"] / t  # noqa: E731
    ratios = [
        rate(fast, a) / rate(slow, b)
        for a, b in zip(fast["times_s"], slow["times_s"], strict=False)
    ]
    return " (by repeat: " + ", ".join(f"{r:.2f}" for r in ratios) + ")"


def first_difference(a: list[list[int]] | None, b: list[list[int]] | None) -> str:
    if a is None or b is None:
        return "—"
    for row, (x, y) in enumerate(zip(a, b, strict=False)):
        for position, (s, t) in enumerate(zip(x, y, strict=False)):
            if s != t:
                return f"MISMATCH: row {row}, new token {position}"
        if len(x) != len(y):
            return f"MISMATCH: row {row} lengths {len(x)} and {len(y)}"
    return "identical"


def faster_gpt2(variants: dict[str, dict[str, Any]], suffix: str = "") -> dict[str, Any] | None:
    found = [
        variants.get(f"GPT-2 generate(){suffix}"),
        variants.get(f"GPT-2 past_key_values loop{suffix}"),
    ]
    found = [v for v in found if v and v.get("tokens_per_s")]
    return max(found, key=lambda v: v["tokens_per_s"]) if found else None


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------


def print_report(results: dict[str, Any]) -> None:
    print(report_text(results))


def report_text(results: dict[str, Any]) -> str:
    out: list[str] = []
    sizes = results["sizes"]
    machine = results["machine"]
    out += [
        "# Generation benchmark"
        + (" (--quick: a smoke test, not a measurement)" * results["quick"]),
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; torch "
        f"{machine['versions']['torch']}, transformers {machine['versions']['transformers']}. "
        f"Load average {results['load_average'][0]:.2f} at the start, "
        f"{results['load_average'][-1]:.2f} at the end; wall time {results['wall_s']:.0f} s.",
        f"Greedy, {sizes['prompt_tokens']}-token prompts, {sizes['new_tokens']} new tokens a "
        f"row, batch 1 and {sizes['batch']}; medians of {sizes['repeats']} timed runs after a "
        "warm-up, the variants of a comparison alternating in one fresh process; "
        f"{sizes['threads']} torch thread(s).",
        "",
    ]
    for entry in results["chunk_sizes"]:
        out += describe_setup(entry)
    out += tokens_table(results)
    out += targets_table(results)
    out += parts_table(results)
    out += per_chunk_table(results)
    return "\n".join(out).rstrip() + "\n"


def describe_setup(entry: dict[str, Any]) -> list[str]:
    p = entry["prepared"]
    c = p["model_config"]
    lines = [
        f"Chunk size {entry['chunk_size']}: {p['chunks']:,} chunks of {p['documents']} "
        f"documents, {p['neighbours']} neighbours, embedder {p['embedder']}, retriever "
        f"{p['retriever']}{' (' + ' '.join(p['overrides']) + ')' if p['overrides'] else ''}. "
        f"Model: {p['model_source']}; dec_dim {c['dec_dim']}, {c['dec_depth']} layers, CCA at "
        f"{list(c['dec_cross_attn_layers'])}, {c['heads']} heads × {c['dim_head']}, enc_dim "
        f"{c['enc_dim']} × {c['enc_depth']}, max_seq_len {c['max_seq_len']}, vocabulary "
        f"{c['num_tokens']:,}, {p['params'] / 1e6:.1f}M parameters. Prompts: the first "
        f"tokens of {p['prompts_from']}.",
    ]
    for comparison in entry["comparisons"]:
        gpt2 = comparison.get("gpt2")
        if gpt2 and comparison["batch"] == 1:
            width = (
                "the same attention width as ours"
                if gpt2["attention_width_matches"]
                else f"attention width {gpt2['n_embd']} against our "
                f"{gpt2['n_head']} × {gpt2['ours_dim_head']}"
            )
            lines.append(
                f"GPT-2: n_embd {gpt2['n_embd']}, n_layer {gpt2['n_layer']}, n_head "
                f"{gpt2['n_head']} (head dim {gpt2['head_dim']}: {width}), n_inner "
                f"{gpt2['n_inner']}, exact GELU, vocabulary {gpt2['vocab_size']:,}, n_positions "
                f"{gpt2['n_positions']} (prompt + new tokens: it attends to the whole text, "
                f"where ours slides a {c['max_seq_len']}-token window), attention "
                f"{gpt2['attn_implementation']}, {gpt2['params'] / 1e6:.1f}M parameters, "
                "random weights."
            )
    lines.append("")
    return lines


def tokens_table(results: dict[str, Any]) -> list[str]:
    rows = []
    for entry in results["chunk_sizes"]:
        for comparison in entry["comparisons"]:
            if comparison.get("status") != "ok":
                rows.append(
                    [str(entry["chunk_size"]), str(comparison["batch"]), "all", "—", "—", "—", "—"]
                    + [f"{comparison.get('status')}: {comparison.get('detail', '')}"]
                )
                continue
            variants = {v["name"]: v for v in comparison["variants"]}
            reference = variants.get("cached, retrieval on")
            for v in comparison["variants"]:
                times = v["times_s"]
                note = "" if v["deterministic"] else "tokens differ between repeats"
                if v["impl"] == "recompute":
                    note = "tokens vs cached: " + first_difference(
                        v["tokens"], reference and reference["tokens"]
                    )
                rows.append(
                    [
                        str(entry["chunk_size"]),
                        str(v["batch"]),
                        v["name"],
                        f"{v['new_tokens']} × {v['batch']}",
                        fmt_seconds(v["median_s"]),
                        f"{fmt_seconds(min(times))}–{fmt_seconds(max(times))}",
                        f"{v['tokens_per_s']:,.1f}",
                        note,
                    ]
                )
    headers = [
        "chunk",
        "batch",
        "measurement",
        "new tokens",
        "median s",
        "range s",
        "tokens/s",
        "note",
    ]
    return ["## Tokens/s", "", markdown_table(headers, rows), ""]


def verdict(value: float | None, bar: float, *, at_least: bool) -> str:
    if value is None:
        return "not measured"
    met = value >= bar if at_least else value <= bar
    return "met" if met else "NOT met"


def targets_table(results: dict[str, Any]) -> list[str]:
    batch = results["sizes"]["batch"]
    main_chunk = next(e["chunk_size"] for e in results["chunk_sizes"] if e["main"])
    one = find(results, main=True, batch=1)
    many = find(results, main=True, batch=batch) if batch > 1 else {}
    rows = []

    cached, recompute = one.get("cached, retrieval on"), one.get("recompute, retrieval on")
    ratio = speedup(cached, recompute)
    rows.append(
        [
            f"cached / recompute tokens/s, retrieval on, chunk {main_chunk}, batch 1",
            "≥ 10×",
            fmt_x(ratio) + per_repeat(cached, recompute),
            verdict(ratio, CACHED_OVER_RECOMPUTE, at_least=True),
        ]
    )
    same = first_difference(
        (one.get("recompute, retrieval on") or {}).get("tokens"),
        (one.get("cached, retrieval on") or {}).get("tokens"),
    )
    rows.append(
        [
            "greedy tokens, cached vs recompute",
            "identical",
            same,
            "met" if same == "identical" else ("not measured" if same == "—" else "NOT met"),
        ]
    )
    for label, variants, suffix, bar in (
        ("batch 1", one, "", True),
        (f"batch {batch}", many, "", True),
        ("batch 1, no window slide", one, ", no slide", False),
    ):
        if not variants:
            continue
        gpt2 = faster_gpt2(variants, suffix)
        ours = variants.get(f"cached, retrieval off{suffix}")
        if gpt2 is None or ours is None:
            continue
        ratio = speedup(ours, gpt2)
        rows.append(
            [
                f"ours (cached, retrieval off) / GPT-2 ({gpt2['name']}) tokens/s, {label}",
                "≥ 1.0×" if bar else "(no bar)",
                fmt_x(ratio) + per_repeat(ours, gpt2),
                verdict(ratio, OURS_OVER_GPT2, at_least=True) if bar else "—",
            ]
        )
    for entry in results["chunk_sizes"]:
        m = entry["chunk_size"]
        for rows_in_batch in (1, batch) if batch > 1 else (1,):
            variants = find(results, chunk=m, batch=rows_in_batch)
            if not variants:
                continue
            off, on = variants.get("cached, retrieval off"), variants.get("cached, retrieval on")
            slow = speedup(off, on)
            is_bar = m == BAR_CHUNK and rows_in_batch == 1
            rows.append(
                [
                    f"retrieval on / off time, cached, chunk {m}, batch {rows_in_batch}",
                    "≤ 1.3×" if is_bar else "(no bar)",
                    fmt_x(slow) + per_repeat(off, on),
                    verdict(slow, RETRIEVAL_ON_OVER_OFF, at_least=False) if is_bar else "—",
                ]
            )
    headers = ["target", "bar", "measured (ratio of the medians)", ""]
    return ["## Targets (issue 13)", "", markdown_table(headers, rows), ""]


def fmt_x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def part(parts: dict[str, dict[str, float]], name: str) -> tuple[float, int, int]:
    found = parts.get(name, {})
    return found.get("seconds", 0.0), int(found.get("calls", 0)), int(found.get("count", 0))


PART_ROWS = [
    ("total", "the whole generate() call"),
    ("prefill", "prompt prefill"),
    ("step", "single-token decode steps"),
    ("re-prefill", "re-prefills when the window slides"),
    ("encoder", "… of which the encoder (inside the three above)"),
    ("cca keys", "… of which the CCA key projections"),
    ("retrieval", "retrieval"),
    ("embed", "… embedding"),
    ("search", "… index search"),
    ("neighbour tokens", "… neighbour tokens"),
    ("retrieval other", "… the rest (chunk text, bookkeeping)"),
    ("loop", "the rest: sampling, the Python loop"),
]


def breakdown(variant: dict[str, Any]) -> dict[str, tuple[float, int, int]]:
    parts = variant["parts_median"]
    rows = {name: part(parts, name) for name, _ in PART_ROWS}
    total = variant["median_s"]
    rows["total"] = (total, 1, variant["new_tokens"] * variant["batch"])
    retrieval = rows["retrieval"][0]
    inner = sum(rows[name][0] for name in ("embed", "search", "neighbour tokens"))
    rows["retrieval other"] = (max(retrieval - inner, 0.0), rows["retrieval"][1], 0)
    model = sum(rows[name][0] for name in ("prefill", "step", "re-prefill"))
    rows["loop"] = (max(total - model - retrieval, 0.0), 0, 0)
    return rows


def parts_table(results: dict[str, Any]) -> list[str]:
    columns = []
    for entry in results["chunk_sizes"]:
        variants = find(results, chunk=entry["chunk_size"], batch=1)
        for name in ("cached, retrieval on", "cached, retrieval off"):
            if name in variants:
                columns.append(
                    (f"chunk {entry['chunk_size']}, {name.split(', ')[1]}", variants[name])
                )
    if not columns:
        return []
    splits = [(label, breakdown(v)) for label, v in columns]
    rows = []
    for key, label in PART_ROWS:
        cells = [label]
        for _, split in splits:
            seconds, calls, count = split[key]
            total = split["total"][0]
            if key != "total" and seconds == 0 and calls == 0:
                cells.append("—")
                continue
            share = f" ({100 * seconds / total:.0f}%)" if key != "total" and total else ""
            extra = ""
            if key in ("step", "re-prefill", "retrieval"):
                extra = f", {calls}×"
            if key == "encoder":
                extra = f", {count} chunks"
            cells.append(f"{1000 * seconds:,.0f} ms{share}{extra}")
        rows.append(cells)
    headers = ["cached, batch 1", *[label for label, _ in splits]]
    return [
        "## Where the cached path's time goes (batch 1, medians)",
        "",
        markdown_table(headers, rows),
        "",
    ]


def per_chunk_table(results: dict[str, Any]) -> list[str]:
    rows = []
    batch = results["sizes"]["batch"]
    for entry in results["chunk_sizes"]:
        m = entry["chunk_size"]
        for rows_in_batch in (1, batch) if batch > 1 else (1,):
            variants = find(results, chunk=m, batch=rows_in_batch)
            on, off = variants.get("cached, retrieval on"), variants.get("cached, retrieval off")
            if on is None:
                continue
            split = breakdown(on)
            chunks = split["retrieval"][2] or int(
                on["parts_median"].get("retrieval", {}).get("count", 0)
            )
            if not chunks:
                continue

            def per(seconds: float, count: int = chunks) -> str:
                return f"{1000 * seconds / count:.1f}" if count else "—"

            encoded = split["encoder"][2]
            model_side = split["encoder"][0] + split["cca keys"][0]
            retrieval_side = split["retrieval"][0]
            extra = (on["median_s"] - off["median_s"]) if off else None
            rows.append(
                [
                    str(m),
                    str(rows_in_batch),
                    str(chunks),
                    per(split["embed"][0]),
                    per(split["search"][0]),
                    per(split["neighbour tokens"][0]),
                    per(split["retrieval other"][0]),
                    f"{per(model_side)} ({encoded} encoded)",
                    per(model_side + retrieval_side),
                    "—" if extra is None else per(extra),
                    fmt_ratio(on["median_s"], off["median_s"]) if off else "—",
                ]
            )
    headers = [
        "chunk",
        "batch",
        "chunks retrieved",
        "embed ms",
        "search ms",
        "neighbour tokens ms",
        "rest ms",
        "encoder + CCA keys ms",
        "total ms",
        "on − off time ms",
        "on / off time",
    ]
    return [
        "## Retrieval per completed chunk (cached, medians; ms per chunk of one row)",
        "",
        markdown_table(headers, rows),
        "",
        "Encoder + CCA keys: every encoding divided by the chunks retrieved; a re-prefill "
        "re-encodes the neighbours of every chunk left in the window, so more chunks are "
        "encoded than retrieved. On − off: the difference of the two medians over the chunks "
        "retrieved (the whole cost of retrieval, as the generation sees it).",
        "",
    ]

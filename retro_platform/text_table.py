"""Plain-text tables for terminal output (the CLI's listings, the runner's closing summary)."""

from __future__ import annotations


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, like ``pip list``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)

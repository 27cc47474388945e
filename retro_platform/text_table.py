"""Plain-text tables for terminal output (the CLI's listings, the runner's closing summary),
and markdown tables for MLflow descriptions and artifacts."""

from __future__ import annotations


def text_table(header: tuple[str, ...], rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    """Left-aligned columns two spaces apart, like ``pip list``."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    """A markdown table, padded so that it reads in a terminal too; the first column
    left-aligned, the others right-aligned (numbers)."""
    widths = [max(3, *(len(row[i]) for row in [header, *rows])) for i in range(len(header))]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        padded = [cell.rjust(width) for cell, width in zip(cells, widths, strict=True)]
        padded[0] = cells[0].ljust(widths[0])
        return "| " + " | ".join(padded) + " |"

    rule = "|:" + "-" * (widths[0] + 1) + "".join(f"|{'-' * (w + 1)}:" for w in widths[1:]) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])

"""Plain-text tables shared by the CLI and the reports."""

from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table padded for the terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])

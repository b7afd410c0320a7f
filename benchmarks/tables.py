"""One way for every benchmark to show a table: rich on the terminal, Markdown to keep, CSV."""

from __future__ import annotations

import csv
from collections.abc import Collection, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def emit_table(
    console: Console,
    title: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    left: Collection[str] = (),
    echo_markdown: bool = False,
) -> str:
    """Prints ``rows`` under ``header`` (columns in ``left`` left-aligned, the rest right) and
    returns the same table as Markdown; ``echo_markdown`` also prints that text, whole however
    narrow the terminal."""
    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="left" if column in left else "right")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows:
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.print(table)
    text = "\n".join(lines)
    if echo_markdown:
        print(text, flush=True)
    return text


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """The same table as CSV (one header line, then the rows)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

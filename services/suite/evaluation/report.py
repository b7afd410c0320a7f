"""The evaluation's outputs: rich tables, results.md, results.csv, tradeoff.png, lorenz.png."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

from services.suite.evaluation.metrics import METRICS, gini, lorenz_curve

HEADERS = {
    "ndcg": "NDCG",
    "recall": "Recall",
    "tail_recall": "TailRec",
    "cold_recall": "ColdRec",
    "aplt": "APLT",
    "cold_share": "Cold",
    "coverage": "Cov",
    "gini": "Gini",
    "arp": "ARP",
    "novelty": "Nov",
    "ild": "ILD",
}
DIGITS = {"arp": 1, "novelty": 2}
TABLE_WIDTH = 200


@dataclasses.dataclass
class ResultRow:
    """One method or setting: ``kind`` is "baseline" (computed here) or "suite" (served by the
    gateway); ``family`` groups a sweep into one curve of the trade-off plot."""

    method: str
    family: str
    kind: str
    setting: str
    metrics: dict[str, float]
    # Top-K appearances per catalogue item at the plotted K (Lorenz curve).
    exposure: npt.NDArray[np.int64] | None = None
    fallbacks: int = 0

    def value(self, metric: str, k: int) -> float:
        return self.metrics[f"{metric}@{k}"]


def _fmt(metric: str, value: float) -> str:
    return f"{value:.{DIGITS.get(metric, 4)}f}"


def table_rows(rows: Sequence[ResultRow], k: int) -> tuple[list[str], list[list[str]]]:
    header = ["method", "setting"] + [f"{HEADERS[m]}@{k}" for m in METRICS]
    body = [[row.method, row.setting] + [_fmt(m, row.value(m, k)) for m in METRICS] for row in rows]
    return header, body


def markdown(rows: Sequence[ResultRow], ks: Sequence[int], preamble: str = "") -> str:
    parts = [preamble.rstrip() + "\n"] if preamble else []
    for k in ks:
        header, body = table_rows(rows, k)
        parts.append(f"\n### K = {k}\n")
        parts.append("| " + " | ".join(header) + " |")
        parts.append("| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |")
        parts.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(parts) + "\n"


def wide(console: Console) -> Console:
    """The console, or one as wide as the tables: wide rather than truncating the numbers."""
    if console.width >= TABLE_WIDTH:
        return console
    return Console(file=console.file, width=TABLE_WIDTH, force_terminal=console.is_terminal)


def print_tables(rows: Sequence[ResultRow], ks: Sequence[int], console: Console) -> None:
    # Thirteen columns do not fit 80 characters.
    console = wide(console)
    for k in ks:
        header, body = table_rows(rows, k)
        table = Table(title=f"Offline evaluation, K = {k}", show_lines=False)
        for index, name in enumerate(header):
            table.add_column(name, justify="left" if index < 2 else "right", no_wrap=index >= 2)
        for cells in body:
            table.add_row(*cells)
        console.print(table)


def write_csv(rows: Sequence[ResultRow], ks: Sequence[int], path: Path) -> None:
    columns = [f"{m}@{k}" for k in ks for m in METRICS]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "family", "kind", "setting", *columns, "fallbacks"])
        for row in rows:
            writer.writerow(
                [row.method, row.family, row.kind, row.setting]
                + [f"{row.metrics[c]:.6f}" for c in columns]
                + [row.fallbacks]
            )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list[object]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab20" if n > 10 else "tab10")
    return [cmap(i % cmap.N) for i in range(n)]


def tradeoff_plot(rows: Sequence[ResultRow], k: int, path: Path) -> None:
    """NDCG@k against APLT@k: one curve per swept family, single settings as points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 6.5), dpi=120)
    families: dict[str, list[ResultRow]] = {}
    for row in rows:
        families.setdefault(row.family, []).append(row)
    markers = "osD^v<>ph*XP"
    colours = _colours(len(families))
    for index, (family, members) in enumerate(families.items()):
        xs = [r.value("aplt", k) for r in members]
        ys = [r.value("ndcg", k) for r in members]
        baseline = members[0].kind == "baseline"
        marker = markers[index % len(markers)]
        label = f"{family} ({'baseline' if baseline else 'gateway'})"
        colour = colours[index]
        if len(members) > 1:
            ax.plot(
                xs,
                ys,
                "--" if baseline else "-",
                marker=marker,
                label=label,
                markersize=6,
                color=colour,
            )
            # Label the two ends of a sweep with their parameter value (the middle would crowd).
            for r, x, y in ((members[0], xs[0], ys[0]), (members[-1], xs[-1], ys[-1])):
                ax.annotate(
                    r.setting.split("=")[-1],
                    (x, y),
                    fontsize=7,
                    color=colour,
                    textcoords="offset points",
                    xytext=(4, 3),
                )
        else:
            ax.scatter(xs, ys, marker=marker, s=60, label=label, zorder=3, color=colour)
    ax.set_xlabel(f"APLT@{k} (share of tail items in the list)")
    ax.set_ylabel(f"NDCG@{k}")
    ax.set_title(f"Accuracy vs long-tail share (NDCG@{k} vs APLT@{k}); dashed = baselines")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lorenz_plot(rows: Sequence[ResultRow], k: int, path: Path) -> None:
    """Lorenz curves of top-k exposure over the whole catalogue, with each row's Gini; the
    right panel zooms on the most exposed 20% of items, where the curves differ."""
    plt = _pyplot()
    fig, (full, zoom) = plt.subplots(1, 2, figsize=(14, 6.5), dpi=120)
    colours = _colours(len(rows))
    for ax in (full, zoom):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="equal exposure (Gini 0)")
    for colour, row in zip(colours, rows, strict=True):
        if row.exposure is None:
            continue
        x, y = lorenz_curve(row.exposure)
        style = "--" if row.kind == "baseline" else "-"
        label = f"{row.method} {row.setting} (Gini {gini(row.exposure):.3f})"
        for ax in (full, zoom):
            ax.plot(x, y, style, label=label, linewidth=1.4, color=colour)
    full.set_xlim(0, 1)
    full.set_ylim(0, 1)
    full.set_title(f"Lorenz curves of top-{k} exposure (dashed = baselines)")
    zoom.set_xlim(0.8, 1)
    zoom.set_ylim(0, 1)
    zoom.set_title("zoom: the most exposed 20% of the catalogue")
    for ax in (full, zoom):
        ax.set_xlabel("cumulative share of catalogue items (least exposed first)")
        ax.set_ylabel(f"cumulative share of top-{k} exposure")
        ax.grid(True, alpha=0.3)
    full.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def lorenz_selection(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """One row per family (the last of its sweep, the most aggressive) to keep the plot legible."""
    chosen: dict[str, ResultRow] = {}
    for row in rows:
        chosen[row.family] = row
    return list(chosen.values())


def write_outputs(
    rows: Sequence[ResultRow],
    ks: Sequence[int],
    out: Path,
    preamble: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """results.md, results.csv, tradeoff.png and lorenz.png (at the first K) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "tradeoff": out / "tradeoff.png",
        "lorenz": out / "lorenz.png",
    }
    text = markdown(rows, ks, preamble)
    for title, body in (extra or {}).items():
        text += f"\n### {title}\n\n{body.rstrip()}\n"
    paths["markdown"].write_text(text, encoding="utf-8")
    write_csv(rows, ks, paths["csv"])
    tradeoff_plot(rows, ks[0], paths["tradeoff"])
    lorenz_plot(lorenz_selection(rows), ks[0], paths["lorenz"])
    return paths

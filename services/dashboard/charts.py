"""Charts as inline SVG, drawn on the server: the page needs no script and nothing from outside.

Plain string building with every text escaped; each chart carries a <title> and <desc> for
screen readers, and its figures are in the page's tables too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from html import escape

# Colour-blind safe (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")
_FONT = 'font-family="system-ui, sans-serif" font-size="11"'


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]


def _percent(value: float) -> str:
    return f"{100 * value:.0f}%"


def _frame(width: int, height: int, title: str, description: str, body: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title><desc>{escape(description)}</desc>{body}</svg>"
    )


def _y_axis(left: int, top: int, plot_w: int, plot_h: int, y_max: float) -> str:
    parts = []
    for step in range(5):
        fraction = step / 4
        y = top + plot_h - fraction * plot_h
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="#ddd" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" {_FONT}>'
            f"{_percent(fraction * y_max)}</text>"
        )
    return "".join(parts)


def _legend(names: Sequence[str], left: int, y: int) -> str:
    parts = []
    x = left
    for index, name in enumerate(names):
        colour = PALETTE[index % len(PALETTE)]
        parts.append(
            f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="{y}" {_FONT}>{escape(name)}</text>'
        )
        x += 24 + 7 * len(name)
    return "".join(parts)


def line_chart(
    series: Sequence[Series],
    labels: Sequence[str],
    title: str,
    width: int = 640,
    height: int = 260,
) -> str:
    """Shares in [0, 1] over equal steps (one label per step, a few of them shown)."""
    left, top, right, bottom = 44, 26, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    steps = max((len(s.values) for s in series), default=0)
    y_max = 1.0

    def x_at(index: int) -> float:
        return left + (plot_w * index / (steps - 1) if steps > 1 else plot_w / 2)

    def y_at(value: float) -> float:
        return top + plot_h - min(max(value, 0.0), y_max) / y_max * plot_h

    body = [_y_axis(left, top, plot_w, plot_h, y_max), _legend([s.name for s in series], left, 14)]
    for index, one in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in enumerate(one.values))
        if steps > 1:
            body.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{points}"/>'
            )
        body.extend(
            f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="2.5" fill="{colour}">'
            f"<title>{escape(one.name)} {escape(labels[i] if i < len(labels) else '')}: "
            f"{100 * v:.1f}%</title></circle>"
            for i, v in enumerate(one.values)
        )
    shown = sorted({0, steps // 2, steps - 1}) if steps > 2 else list(range(steps))
    for index in shown:
        if index < len(labels):
            anchor = "start" if index == 0 else "end" if index == steps - 1 else "middle"
            body.append(
                f'<text x="{x_at(index):.1f}" y="{height - 12}" text-anchor="{anchor}" {_FONT}>'
                f"{escape(labels[index])}</text>"
            )
    description = "; ".join(
        f"{s.name}: " + ", ".join(f"{100 * v:.1f}%" for v in s.values) for s in series
    )
    return _frame(width, height, title, description, "".join(body))


def lorenz_chart(
    points: Sequence[tuple[float, float]], gini: float, width: int = 300, height: int = 300
) -> str:
    """The Lorenz curve of exposure against the line of equality."""
    left, top, right, bottom = 44, 26, 12, 36
    plot_w, plot_h = width - left - right, height - top - bottom

    def at(x: float, y: float) -> str:
        return f"{left + x * plot_w:.1f},{top + plot_h - y * plot_h:.1f}"

    curve = " ".join(at(x, y) for x, y in points)
    body = (
        _y_axis(left, top, plot_w, plot_h, 1.0)
        + f'<polyline fill="none" stroke="#999" stroke-dasharray="4 3" points="{at(0, 0)} '
        f'{at(1, 1)}"/>'
        + f'<polyline fill="none" stroke="{PALETTE[0]}" stroke-width="2" points="{curve}"/>'
        + f'<text x="{left}" y="16" {_FONT}>Gini {gini:.3f}</text>'
        + f'<text x="{left + plot_w}" y="{height - 12}" text-anchor="end" {_FONT}>'
        "share of items (least exposed first) →</text>"
        + f'<text x="{left}" y="{height - 12}" {_FONT}>0%</text>'
    )
    description = f"Gini {gini:.3f}; " + ", ".join(
        f"{100 * x:.0f}% of items get {100 * y:.1f}% of impressions" for x, y in points[::10]
    )
    return _frame(width, height, "Lorenz curve of exposure", description, body)


def grouped_bars(
    groups: Sequence[str],
    series: Sequence[Series],
    title: str,
    width: int = 640,
    height: int = 240,
) -> str:
    """Shares in [0, 1]: one group per label, one bar per series."""
    left, top, right, bottom = 44, 26, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = max((v for s in series for v in s.values), default=0.0)
    y_max = max(0.05, min(1.0, y_max * 1.15))
    body = [_y_axis(left, top, plot_w, plot_h, y_max), _legend([s.name for s in series], left, 14)]
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = left + g * group_w + group_w * 0.1
        for s, one in enumerate(series):
            value = one.values[g] if g < len(one.values) else 0.0
            bar_h = min(value, y_max) / y_max * plot_h
            body.append(
                f'<rect x="{x0 + s * bar_w:.1f}" y="{top + plot_h - bar_h:.1f}" '
                f'width="{bar_w * 0.9:.1f}" height="{bar_h:.1f}" '
                f'fill="{PALETTE[s % len(PALETTE)]}"><title>{escape(group)} {escape(one.name)}: '
                f"{100 * value:.1f}%</title></rect>"
            )
        body.append(
            f'<text x="{x0 + group_w * 0.4:.1f}" y="{height - 22}" text-anchor="middle" '
            f"{_FONT}>{escape(group)}</text>"
        )
    description = "; ".join(
        f"{group}: "
        + ", ".join(
            f"{s.name} {100 * (s.values[g] if g < len(s.values) else 0):.1f}%" for s in series
        )
        for g, group in enumerate(groups)
    )
    return _frame(width, height, title, description, "".join(body))

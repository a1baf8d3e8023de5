"""Tiny inline-SVG charts: a line chart and a horizontal grouped bar chart. No plotting library needed."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

COLORS = ("#8a8f98", "#2563eb", "#16a34a", "#dc2626")


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    width: int = 640,
    height: int = 240,
    xlabel: str = "",
    ylabel: str = "",
) -> str:
    pts = [p for s in series.values() for p in s]
    if not pts:
        return "<p>(no data)</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    L, R, T, B = 48, 12, 26, 36

    def sx(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (width - L - R)

    def sy(y: float) -> float:
        return height - B - (y - y0) / (y1 - y0) * (height - T - B)

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        out.append(f'<line x1="{L}" x2="{width - R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{L - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2g}</text>')
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        out.append(f'<text x="{sx(x):.1f}" y="{height - B + 16}" font-size="11" text-anchor="middle">{x:.0f}</text>')
    out.append(
        f'<text x="{(L + width - R) / 2}" y="{height - 4}" font-size="12" text-anchor="middle">{escape(xlabel)}</text>'
    )
    out.append(f'<text x="{L}" y="14" font-size="12">{escape(ylabel)}</text>')
    for k, (name, s) in enumerate(series.items()):
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(s))
        color = COLORS[(k + 1) % len(COLORS)]
        out.append(
            f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"><title>{escape(name)}</title></path>'
        )
    out.append("</svg>")
    return "".join(out)


def grouped_bars(
    categories: Sequence[str], groups: dict[str, Sequence[float]], *, width: int = 640, vmax: float = 1.0
) -> str:
    """Horizontal bars, one row per category, one bar per group (e.g. base vs tuned F1 per class)."""
    bar, gap, L, R = 14, 10, 110, 60
    n = len(groups)
    height = len(categories) * (n * bar + gap) + 30
    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">']
    y = 4
    for ci, cat in enumerate(categories):
        out.append(f'<text x="{L - 8}" y="{y + n * bar / 2 + 4}" font-size="12" text-anchor="end">{escape(cat)}</text>')
        for gi, (name, vals) in enumerate(groups.items()):
            v = vals[ci]
            w = max(0.0, v / vmax) * (width - L - R)
            out.append(
                f'<rect x="{L}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{COLORS[gi % len(COLORS)]}">'
                f"<title>{escape(name)}: {v:.3f}</title></rect>"
            )
            out.append(f'<text x="{L + w + 4:.1f}" y="{y + bar - 4}" font-size="11">{v:.2f}</text>')
            y += bar
        y += gap
    lx = L
    for gi, name in enumerate(groups):
        out.append(f'<rect x="{lx}" y="{height - 18}" width="12" height="12" fill="{COLORS[gi % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 16}" y="{height - 8}" font-size="12">{escape(name)}</text>')
        lx += 90
    out.append("</svg>")
    return "".join(out)

"""The overview's chart: completed jobs and failed runs per minute over the last hour,
as SVG markup made on the server (no script, no inline style: the CSP allows neither)."""

from __future__ import annotations

from markupsafe import Markup, escape

from ._reads import Minute

WIDTH = 600
HEIGHT = 110
TOP = 14  # room for the scale's label
BOTTOM = 16  # room for the time axis


def chart_svg(minutes: list[Minute]) -> Markup:
    """Stacked bars, one per minute: completed (below) and failed (above); minutes
    estimated from a sample are drawn paler, and every bar's tooltip gives its numbers."""
    peak = max((m.completed + m.failed for m in minutes), default=0)
    scale = max(peak, 1)
    plot = HEIGHT - TOP - BOTTOM
    step = WIDTH / max(len(minutes), 1)
    bar = max(step - 1.5, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" height="{HEIGHT}" '
        'role="img" aria-label="completed and failed per minute, last hour" '
        'data-testid="throughput-chart" preserveAspectRatio="none">',
        f'<line class="axis" x1="0" y1="{HEIGHT - BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - BOTTOM}"/>',
        f'<text class="scale" x="2" y="10">{peak:,}/min</text>',
    ]
    for i, m in enumerate(minutes):
        x = i * step
        done_h = plot * m.completed / scale
        failed_h = plot * m.failed / scale
        base = HEIGHT - BOTTOM
        done = f"{'about ' if m.completed_estimated else ''}{m.completed:,} completed"
        failed = f"{'about ' if m.failed_estimated else ''}{m.failed:,} failed"
        note = " (estimated from a sample of the minute)" if m.estimated else ""
        label = escape(f"{m.start:%H:%M} UTC: {done}, {failed}{note}")
        parts.append(f"<g><title>{label}</title>")
        parts.append(
            f'<rect class="bar-hit" x="{x:.1f}" y="{TOP}" width="{bar:.1f}" height="{plot}"/>'
        )
        if m.completed:
            parts.append(
                f'<rect class="bar-done{" estimated" if m.completed_estimated else ""}" '
                f'x="{x:.1f}" y="{base - done_h:.1f}" '
                f'width="{bar:.1f}" height="{done_h:.1f}"/>'
            )
        if m.failed:
            parts.append(
                f'<rect class="bar-failed{" estimated" if m.failed_estimated else ""}" x="{x:.1f}" '
                f'y="{base - done_h - failed_h:.1f}" width="{bar:.1f}" height="{failed_h:.1f}"/>'
            )
        parts.append("</g>")
    if minutes:
        parts.append(
            f'<text class="tick" x="0" y="{HEIGHT - 3}">{minutes[0].start:%H:%M}</text>'
            f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 3}" text-anchor="end">now</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))

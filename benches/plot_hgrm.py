#!/usr/bin/env python3
"""Render HdrHistogram .hgrm percentile files (loadgen --hgrm) as one SVG
latency-by-percentile chart, the classic HdrHistogram plot: x = percentile on
a log scale of 1/(1-p) (50%, 90%, 99%, 99.9%, ...), y = latency in ms.

    benches/plot_hgrm.py out.svg label1=file1.hgrm label2=file2.hgrm ...

Standard library only, so it runs anywhere Python 3 does.
"""

import math
import sys

WIDTH, HEIGHT = 860, 480
LEFT, RIGHT, TOP, BOTTOM = 70, 200, 30, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
TICKS = [(0.5, "50%"), (0.9, "90%"), (0.99, "99%"), (0.999, "99.9%"), (0.9999, "99.99%"), (0.99999, "99.999%")]


def read_hgrm(path):
    points = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) < 3 or line.startswith("#"):
                continue
            try:
                value_us, percentile = float(fields[0]), float(fields[1])
            except ValueError:
                continue
            if percentile < 1.0:
                points.append((percentile, value_us / 1000.0))
    return points


def x_of(percentile, x_max):
    level = math.log10(1.0 / (1.0 - percentile))
    return LEFT + (WIDTH - LEFT - RIGHT) * level / x_max


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = sys.argv[1]
    series = []
    for argument in sys.argv[2:]:
        label, _, path = argument.partition("=")
        series.append((label, read_hgrm(path or label)))
    x_max = max(math.log10(1.0 / (1.0 - p)) for _, points in series for p, _ in points)
    x_max = max(3.0, math.ceil(x_max))
    y_max = max(ms for _, points in series for _, ms in points) * 1.05 or 1.0
    y_of = lambda ms: HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * ms / y_max
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             f'<text x="{LEFT}" y="18" font-size="14">Latency by percentile (ms)</text>']
    for percentile, label in TICKS:
        if math.log10(1.0 / (1.0 - percentile)) <= x_max:
            x = x_of(percentile, x_max)
            parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="#ddd"/>')
            parts.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{label}</text>')
    for i in range(6):
        ms = y_max * i / 5
        y = y_of(ms)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{ms:.1f}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="black"/>')
    for i, (label, points) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        path = " ".join(f"{x_of(p, x_max):.1f},{y_of(ms):.1f}" for p, ms in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        y = TOP + 10 + 18 * i
        parts.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{y}" x2="{WIDTH - RIGHT + 32}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 38}" y="{y + 4}">{label}</text>')
    parts.append("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()

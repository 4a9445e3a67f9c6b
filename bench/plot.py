"""Latency plot for the benchmark: percentile curves per path, one panel per concurrency.

Uses matplotlib (bench/requirements.txt; bench.run installs it on demand). Without it, `write_png`
falls back to a dependency-free bar chart (p50/p90/p99 per path as bars, no text), so a run never
fails for want of a plotting library.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

from bench.common import percentile

# Percentiles drawn on the curves; the x axis is in "nines" (-log10(1 - p)).
CURVE_POINTS = (1, 5, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 99.9)
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def write_png(panels: list[tuple[str, list[tuple[str, list[float]]]]], out: Path, title: str) -> str:
    """panels: [(panel title, [(path label, ascending latencies in ms), ...]), ...]. Returns the
    backend used ('matplotlib' or 'fallback')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _fallback_png(panels, out)
        return "fallback"
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    xs = [-math.log10(1 - p / 100) for p in CURVE_POINTS]
    for ax, (panel_title, series) in zip(axes[0], panels, strict=True):
        for color, (label, values) in zip(COLORS, series, strict=False):
            if not values:
                continue
            ys = [percentile(values, p) for p in CURVE_POINTS]
            ax.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
            for p in (50, 99):
                x = -math.log10(1 - p / 100)
                ax.annotate(
                    f"{percentile(values, p):.2f}",
                    (x, percentile(values, p)),
                    fontsize=7,
                    color=color,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        ticks = (50, 90, 99, 99.9)
        ax.set_xticks([-math.log10(1 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks])
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title(panel_title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return "matplotlib"


def _fallback_png(panels: list[tuple[str, list[tuple[str, list[float]]]]], out: Path) -> None:
    """Grouped bars (p50, p90, p99, darker = higher percentile) per path and panel, log-ish scale."""
    width, height, margin = 320 * len(panels), 240, 20
    pixels = [[(255, 255, 255)] * width for _ in range(height)]
    top = max((percentile(v, 99) for _, series in panels for _, v in series if v), default=1.0)
    scale = (height - 2 * margin) / math.log10(1 + top * 10)
    for index, (_, series) in enumerate(panels):
        x = index * 320 + margin
        for color_index, (_, values) in enumerate(series):
            base = _rgb(COLORS[color_index % len(COLORS)])
            for shade, p in enumerate((50, 90, 99)):
                value = percentile(values, p) if values else 0.0
                bar = int(math.log10(1 + value * 10) * scale)
                color = tuple(int(c * (1 - 0.25 * shade)) for c in base)
                for y in range(height - margin - bar, height - margin):
                    for dx in range(12):
                        pixels[y][x + dx] = color
                x += 14
            x += 16
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in pixels)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    out.write_bytes(png)


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]

"""Pictures of results, drawn with Pillow (no plotting library needed): rate-distortion curves and
before/after grids."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"aeflow": (200, 30, 30), "JPEG": (40, 90, 200), "WebP": (30, 150, 60)}


def rd_curve_png(curves: dict[str, list[tuple[float, float]]], title: str, y_label: str = "PSNR-RGB (dB)",
                 size: tuple[int, int] = (720, 480)) -> bytes:
    """One line per codec of (bpp, quality) points, axes with ticks, a legend; returns PNG bytes."""
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    points = [p for pts in curves.values() for p in pts if math.isfinite(p[1])]
    x_max = max(p[0] for p in points) * 1.05
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    y_min, y_max = math.floor(y_min) - 0.5, math.ceil(y_max) + 0.5
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)

    def xy(bpp: float, value: float) -> tuple[float, float]:
        return (left + bpp / x_max * (w - left - right),
                h - bottom - (value - y_min) / (y_max - y_min) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(6):
        bx = x_max * i / 5
        x, _ = xy(bx, y_min)
        draw.line([x, h - bottom, x, h - bottom + 5], fill="black")
        draw.text((x - 12, h - bottom + 8), f"{bx:.2f}", fill="black")
        v = y_min + (y_max - y_min) * i / 5
        _, y = xy(0, v)
        draw.line([left - 5, y, left, y], fill="black")
        draw.text((left - 45, y - 6), f"{v:.1f}", fill="black")
    draw.text((w // 2 - 60, h - 20), "bits per pixel (stored bytes)", fill="black")
    draw.text((5, top - 25), y_label, fill="black")
    draw.text((w // 2 - 4 * len(title), 8), title, fill="black")
    for n, (name, pts) in enumerate(curves.items()):
        colour = COLOURS.get(name, (90, 90, 90))
        pts = sorted(p for p in pts if math.isfinite(p[1]))
        line = [xy(*p) for p in pts]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        ly = top + 10 + 18 * n
        draw.line([w - right - 110, ly + 6, w - right - 85, ly + 6], fill=colour, width=3)
        draw.text((w - right - 78, ly), name, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid_png(rows: list[list[tuple[str, np.ndarray]]], size: int = 160) -> bytes:
    """One row per image of centre crops, size x size, side by side (e.g. clean | degraded | restored), each
    under its label; a grid whose labels are all empty has no label strips. Returns PNG bytes."""
    strip = 14 if any(label for row in rows for label, _ in row) else 0
    cols = max(len(row) for row in rows)
    grid = Image.new("RGB", (size * cols, (size + strip) * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for r, row in enumerate(rows):
        top = r * (size + strip)
        for c, (label, arr) in enumerate(row):
            y, x = max(0, (arr.shape[0] - size) // 2), max(0, (arr.shape[1] - size) // 2)
            grid.paste(Image.fromarray(arr[y:y + size, x:x + size]), (c * size, top + strip))
            if label:
                draw.text((c * size + 3, top + 1), label, fill="black")
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()

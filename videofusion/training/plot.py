"""The training loss as a PNG a person can read, drawn with PIL alone (no plotting library): labelled axes
with ticks, the loss on a log scale, the raw loss in light grey under a smoothed curve."""
from __future__ import annotations

import math

from PIL import Image, ImageDraw

WIDTH, HEIGHT = 720, 420
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 40, 50  # margins in pixels around the plot area
RAW, SMOOTH, GRID, INK = (205, 205, 205), (30, 80, 220), (235, 235, 235), (0, 0, 0)


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def step_ticks(num_steps: int, max_ticks: int = 8) -> list[int]:
    """Round step numbers from 0 to ``num_steps``: multiples of 1, 2 or 5 times a power of ten."""
    if num_steps <= 0:
        return [0]
    raw = num_steps / max_ticks
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return list(range(0, num_steps + 1, max(1, int(step))))


def log_ticks(low: float, high: float) -> list[float]:
    """Loss values for the ticks of a log axis from ``low`` to ``high`` (> 0): the powers of ten in the
    range, with 2x and 5x between them when the range spans less than three decades."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    mantissas = (1, 2, 5) if hi - lo <= 3 else (1,)
    ticks = [m * 10.0 ** e for e in range(lo, hi + 1) for m in mantissas]
    inside = [t for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [low, high]


def loss_plot(losses: list[float], title: str = "training loss") -> Image.Image:
    """The plot of ``losses`` (one per step) as an RGB image."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP  # y0 is the bottom of the plot area
    draw.text((LEFT, 12), title, fill=INK)
    draw.text(((x0 + x1) // 2 - 12, HEIGHT - 18), "step", fill=INK)
    label = Image.new("RGB", (120, 14), "white")
    ImageDraw.Draw(label).text((0, 0), "loss (log scale)", fill=INK)
    image.paste(label.rotate(90, expand=True), (4, (y0 + y1) // 2 - 60))
    values = [max(v, 1e-12) for v in losses if math.isfinite(v)]
    if values:
        low, high = min(values), max(values)
        if high <= low * 1.0001:
            low, high = low / 2, high * 2
        span = math.log10(high) - math.log10(low)
        steps = max(1, len(losses) - 1)

        def y(v: float) -> float:
            return y0 - (y0 - y1) * (math.log10(max(v, 1e-12)) - math.log10(low)) / span

        def x(i: float) -> float:
            return x0 + (x1 - x0) * i / steps

        for tick in log_ticks(low, high):
            draw.line([(x0, y(tick)), (x1, y(tick))], fill=GRID)
            draw.line([(x0 - 5, y(tick)), (x0, y(tick))], fill=INK)
            draw.text((22, y(tick) - 6), f"{tick:.3g}", fill=INK)
        for tick in step_ticks(len(losses) - 1):
            draw.line([(x(tick), y0), (x(tick), y0 + 5)], fill=INK)
            draw.text((x(tick) - 3 * len(str(tick)), y0 + 8), str(tick), fill=INK)
        points = [(x(i), y(v)) for i, v in enumerate(losses) if math.isfinite(v)]
        window = min(len(values), max(5, len(values) // 50))
        smooth = moving_average(values, window)
        draw.line(points, fill=RAW, width=1)
        draw.line([(px, y(v)) for (px, _), v in zip(points, smooth)], fill=SMOOTH, width=2)
        draw.line([(x1 - 150, TOP - 22), (x1 - 130, TOP - 22)], fill=RAW, width=2)
        draw.text((x1 - 125, TOP - 28), "raw", fill=INK)
        draw.line([(x1 - 90, TOP - 22), (x1 - 70, TOP - 22)], fill=SMOOTH, width=2)
        draw.text((x1 - 65, TOP - 28), f"mean of {window}", fill=INK)
    draw.rectangle([x0, y1, x1, y0], outline=INK)
    return image

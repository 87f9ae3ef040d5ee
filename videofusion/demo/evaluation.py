"""Prompt adherence of "moving shapes" clips: does the video show the prompt's colour, shape, direction?

A model-free estimator for clips like those of :mod:`videofusion.demo.shapes` (one coloured
shape on a plain background), built to tolerate the soft, noisy output of a small diffusion model:

1. denoise with a 3x3 box blur; the background of each frame is the median of its 2-pixel border;
2. contrast = median over frames of the largest colour distance from the background; below
   ``MIN_CONTRAST`` or 4x the median distance (noise level) the clip is blank: every prediction
   is ``None``;
3. colour: the median of (pixel - background) over the "core" pixels (distance > 0.6 x contrast),
   classified to the nearest :data:`~videofusion.demo.shapes.COLOURS` entry by hue (``None``
   if it is grey; with ``extra_colours``, those of :data:`~videofusion.demo.shapes.EXTRA_COLOURS`
   compete too); hue of a difference from a grey is the hue of the colour itself, and it is
   unchanged by a washed-out shape (blended with the background);
4. coverage ``alpha`` of each pixel: the projection of (pixel - background) onto
   (shape colour - background), 0 at the background and 1 on the shape;
5. direction: the median (x, y) of the pixels with ``alpha > 0.5`` in each frame, a Theil-Sen line
   through them over time; the larger of the two displacements over the clip decides the axis and
   its sign the direction, and ``"none"`` if it is under ``MIN_MOTION`` of the frame extent;
6. shape: in each frame, render a circle, square and triangle with the same area (sum of alpha)
   and centroid as the shape, blurred as the clip was, and take the L1 distance to alpha divided
   by the area; the shape with the smallest median distance over frames wins.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

from videofusion.demo.shapes import COLOURS, DIRECTIONS, EXTRA_COLOURS, SHAPES, coverage

MIN_CONTRAST = 0.1   # colour distance (0..1 RGB units) below which a clip counts as blank
MIN_MOTION = 0.06    # displacement over the clip, as a fraction of the frame extent, to count as motion
MIN_SATURATION = 0.1  # max - min channel of the shape colour below which it is grey (no colour)
_AREA_FACTORS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}  # area / size**2
_ATTRIBUTES = ("colour", "shape", "direction")


def _hue(rgb: np.ndarray) -> float:
    """Hue in degrees [0, 360) of one RGB colour (HSV hexcone)."""
    r, g, b = (float(v) for v in rgb)
    top, span = max(r, g, b), max(r, g, b) - min(r, g, b)
    if span == 0:
        return 0.0
    if top == r:
        h = (g - b) / span
    elif top == g:
        h = (b - r) / span + 2
    else:
        h = (r - g) / span + 4
    return (60.0 * h) % 360.0


_HUES = {name: _hue(np.asarray(rgb, np.float64)) for name, rgb in {**COLOURS, **EXTRA_COLOURS}.items()}


def check_extra_colours(extra_colours: Iterable[str]) -> tuple[str, ...]:
    """``extra_colours`` as a tuple, each name checked against :data:`EXTRA_COLOURS` (a ValueError names the
    unknown ones)."""
    if isinstance(extra_colours, str):
        raise TypeError(f"extra_colours must be a list of names, got the string {extra_colours!r}")
    extra = tuple(extra_colours)
    unknown = [name for name in extra if name not in EXTRA_COLOURS]
    if unknown:
        raise ValueError(f"extra_colours: {unknown} are not among {sorted(EXTRA_COLOURS)}")
    return extra


def classify_colour(rgb: Iterable[float], extra_colours: Iterable[str] = ()) -> str | None:
    """Nearest :data:`COLOURS` name by hue to an RGB colour in [0, 1]; ``None`` if it is grey
    (max - min channel under ``MIN_SATURATION``). ``extra_colours`` (names from :data:`EXTRA_COLOURS`,
    e.g. ``["orange"]``) are candidates too; by default only :data:`COLOURS` are.

    Hue and max - min are unchanged by adding a grey, so ``rgb`` may also be the difference
    between a colour and a grey background (what :func:`analyse_clip` passes).
    """
    names = list(COLOURS) + [n for n in check_extra_colours(extra_colours) if n not in COLOURS]
    rgb = np.asarray(rgb, np.float64)
    if rgb.max() - rgb.min() < MIN_SATURATION:
        return None
    hue = _hue(rgb)
    return min(names, key=lambda name: abs((hue - _HUES[name] + 180.0) % 360.0 - 180.0))


def _as_clip(frames) -> np.ndarray:
    """Validate a clip and return it as float32 ``(frames, height, width, 3)`` in [0, 1]."""
    clip = np.asarray(frames)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"frames must have shape (num_frames, height, width, 3), got {clip.shape}")
    if min(clip.shape[:3]) < 1 or min(clip.shape[1:3]) < 5:
        raise ValueError(f"frames must have at least 1 frame of at least 5x5 pixels, got {clip.shape}")
    if clip.dtype == np.uint8:
        return clip.astype(np.float32) / 255.0
    if not np.issubdtype(clip.dtype, np.floating):
        raise TypeError(f"frames must be uint8 (0..255) or float (0..1), got dtype {clip.dtype}")
    if not np.isfinite(clip).all() or clip.min() < -0.5 or clip.max() > 1.5:
        raise ValueError("float frames must be finite and in [0, 1] (got values far outside: "
                         f"min {np.nanmin(clip):.3g}, max {np.nanmax(clip):.3g})")
    return np.clip(clip, 0.0, 1.0).astype(np.float32)


def _box_blur(clip: np.ndarray) -> np.ndarray:
    """3x3 box blur of each frame of ``(f, h, w, c)``, edges replicated."""
    p = np.pad(clip, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")  # (f, h+2, w+2, c)
    rows = p[:, :-2] + p[:, 1:-1] + p[:, 2:]  # (f, h, w+2, c)
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / 9.0


def _theil_sen_slope(t: np.ndarray, v: np.ndarray) -> float:
    """Theil-Sen estimator (Sen 1968): the median of the slopes between all pairs of points."""
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((v[j] - v[i]) / (t[j] - t[i])))


def _direction(alpha: np.ndarray) -> tuple[str | None, tuple[float, float] | None]:
    """Motion of the shape in a coverage map ``(f, h, w)``: a Theil-Sen line through the per-frame
    medians of the pixels with ``alpha > 0.5``. Returns (direction or ``"none"``, (dx, dy) over the
    clip as fractions of width and height), or (None, None) with fewer than 2 usable frames."""
    num_frames, height, width = alpha.shape
    t, xs, ys = [], [], []
    for f in range(num_frames):
        rows, cols = np.nonzero(alpha[f] > 0.5)
        if len(rows) >= 3:
            t.append(f)
            xs.append(np.median(cols))
            ys.append(np.median(rows))
    if len(t) < 2:
        return None, None
    t = np.asarray(t, np.float64)
    dx = _theil_sen_slope(t, np.asarray(xs)) * (num_frames - 1) / width
    dy = _theil_sen_slope(t, np.asarray(ys)) * (num_frames - 1) / height
    if max(abs(dx), abs(dy)) < MIN_MOTION:
        return "none", (dx, dy)
    if abs(dx) >= abs(dy):
        return ("right" if dx > 0 else "left"), (dx, dy)
    return ("down" if dy > 0 else "up"), (dx, dy)


def _shape_errors(alpha: np.ndarray) -> dict[str, float] | None:
    """Per shape, the median over frames of ``|alpha - template|`` summed and divided by the area,
    where the template has the shape's area and centroid and one 3x3 box blur (as ``alpha``).
    ``None`` when no frame shows a shape."""
    num_frames, height, width = alpha.shape
    covers, areas, templates = [], [], []
    ys, xs = np.mgrid[:height, :width]  # (h, w) pixel indices
    for f in range(num_frames):
        rows, cols = np.nonzero(alpha[f] > 0.5)
        if len(rows) < 4:
            continue
        reach = 1.5 * np.sqrt(len(rows)) + 3  # window around the shape: drops stray blobs elsewhere
        near = (np.abs(xs - np.median(cols)) <= reach) & (np.abs(ys - np.median(rows)) <= reach)
        cover = np.where(near & (alpha[f] > 0.25), np.minimum(alpha[f], 1.0), 0.0)  # (h, w)
        area = cover.sum()
        if area < 2.0:
            continue
        cx, cy = (cover * (xs + 0.5)).sum() / area, (cover * (ys + 0.5)).sum() / area  # centroid, pixels
        for name in SHAPES:
            size = np.sqrt(area / _AREA_FACTORS[name])
            box_cy = cy - size / 6 if name == "triangle" else cy  # triangle: centroid s/6 below box centre
            templates.append(coverage(name, cx, box_cy, size, height, width))
        covers.append(cover)
        areas.append(area)
    if not covers:
        return None
    templates = _box_blur(np.stack(templates)[..., None])[..., 0]  # (k*shapes, h, w)
    templates = templates.reshape(len(covers), len(SHAPES), height, width)  # (k, shapes, h, w)
    covers = np.stack(covers)[:, None]  # (k, 1, h, w)
    errors = np.abs(covers - templates).sum(axis=(2, 3)) / np.asarray(areas)[:, None]  # (k, shapes)
    return dict(zip(SHAPES, np.median(errors, axis=0).tolist()))


def analyse_clip(frames, extra_colours: Iterable[str] = ()) -> dict:
    """Estimate the colour, shape and motion direction of the one shape in a clip.

    ``frames``: ``(num_frames, height, width, 3)``, uint8 or float in [0, 1] (numpy, or anything
    ``np.asarray`` takes); ``extra_colours``: see :func:`classify_colour`. Returns ``{"colour", "shape",
    "direction"}`` (a vocabulary word, ``"none"`` for a still shape, ``None`` when it cannot be told) plus
    diagnostics: ``contrast`` (0..1 RGB distance), ``displacement`` = (dx, dy) over the clip as fractions of
    width and height (y grows downwards), and ``shape_errors`` (template distance per shape, lower is better).
    """
    clip = _as_clip(frames)
    extra_colours = check_extra_colours(extra_colours)
    num_frames = clip.shape[0]
    out = {"colour": None, "shape": None, "direction": None,
           "contrast": 0.0, "displacement": None, "shape_errors": None}
    smooth = _box_blur(clip)
    strips = (smooth[:, :2], smooth[:, -2:], smooth[:, :, :2], smooth[:, :, -2:])  # 2-pixel borders
    border = np.concatenate([b.reshape(num_frames, -1, 3) for b in strips], axis=1)  # (f, border pixels, 3)
    background = np.median(border, axis=1)  # (f, 3)
    diff = smooth - background[:, None, None, :]  # (f, h, w, 3)
    distance = np.linalg.norm(diff, axis=-1)  # (f, h, w)
    out["contrast"] = contrast = float(np.median(distance.max(axis=(1, 2))))
    if contrast < max(MIN_CONTRAST, 4.0 * float(np.median(distance))):  # flat, or noise only
        return out

    core = distance > 0.6 * contrast  # (f, h, w)
    towards = np.median((clip - background[:, None, None, :])[core], axis=0)  # (3,) background -> shape
    out["colour"] = classify_colour(towards, extra_colours)
    alpha = diff @ towards / max(float(towards @ towards), 1e-6)  # (f, h, w): 0 background, 1 shape
    out["direction"], out["displacement"] = _direction(alpha)
    out["shape_errors"] = errors = _shape_errors(alpha)
    if errors is not None:
        out["shape"] = min(errors, key=errors.get)
    return out


_WORDS = {
    "colour": {name: name for name in COLOURS},
    "shape": {**{name: name for name in SHAPES}, **{name + "s": name for name in SHAPES}},
    "direction": {**{name: name for name in DIRECTIONS},
                  **{name + "ward": name for name in DIRECTIONS},
                  **{name + "wards": name for name in DIRECTIONS}},
}


def parse_prompt(prompt: str, extra_colours: Iterable[str] = ()) -> dict:
    """The first colour, shape and direction word of a prompt (``None`` where there is none):
    ``"a red circle moving left"`` -> ``{"colour": "red", "shape": "circle", "direction": "left"}``.
    Plurals (``circles``) and ``leftward(s)``-style directions are understood; ``extra_colours`` (e.g.
    ``["orange"]``) are colour words too."""
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    words = re.findall(r"[a-z]+", prompt.lower())
    found = {}
    extra = {name: name for name in check_extra_colours(extra_colours)}
    for attribute, vocabulary in _WORDS.items():
        if attribute == "colour" and extra:
            vocabulary = {**vocabulary, **extra}
        found[attribute] = next((vocabulary[w] for w in words if w in vocabulary), None)
    return found


def score_clip(frames, prompt: str, segment_frames: int | None = None, extra_colours: Iterable[str] = ()) -> dict:
    """Compare a clip with its prompt (``extra_colours``, e.g. ``["orange"]``: colour words and classes beside
    :data:`COLOURS`, see :func:`classify_colour`).

    Returns ``{"colour_ok", "shape_ok", "direction_ok"}`` (``True``/``False``, or ``None`` when the
    prompt does not name that attribute), ``"predicted"`` (the :func:`analyse_clip` dict) and
    ``"expected"`` (the :func:`parse_prompt` dict).

    With ``segment_frames`` (e.g. 16, the length a model was trained on) and a longer clip, the clip
    is also cut into consecutive segments of that many frames (a shorter rest is dropped) and
    ``"segment_directions"`` lists the direction read in each: a long video that moves all along
    shows the prompt's direction in every segment, one that stands still in between shows ``"none"``.
    """
    expected = parse_prompt(prompt, extra_colours)
    clip = _as_clip(frames)
    predicted = analyse_clip(clip, extra_colours)
    result = {f"{a}_ok": None if expected[a] is None else predicted[a] == expected[a] for a in _ATTRIBUTES}
    result.update(predicted=predicted, expected=expected)
    if segment_frames is not None and len(clip) > segment_frames:
        starts = range(0, len(clip) - segment_frames + 1, segment_frames)
        result["segment_directions"] = [analyse_clip(clip[s:s + segment_frames])["direction"] for s in starts]
    return result


def summarise(results: Iterable[dict]) -> dict:
    """Accuracy per attribute over :func:`score_clip` results.

    Returns ``{"colour", "shape", "direction"}``: the fraction correct among the clips whose prompt
    names the attribute (``None`` if none does); ``"all"``: the fraction of clips with every named
    attribute right; ``"n"``: the number of clips. Clips scored with ``segment_frames`` add
    ``"segment_direction"`` (the fraction of their segments that show the prompt's direction) and
    ``"segment_still"`` (the fraction read as still).
    """
    results = list(results)
    summary = {}
    for a in _ATTRIBUTES:
        oks = [r[f"{a}_ok"] for r in results if r[f"{a}_ok"] is not None]
        summary[a] = sum(oks) / len(oks) if oks else None
    every = [all(r[f"{a}_ok"] is not False for a in _ATTRIBUTES) for r in results]
    summary["all"] = sum(every) / len(every) if every else None
    summary["n"] = len(results)
    segments = [(d, r["expected"]["direction"]) for r in results for d in r.get("segment_directions", ())
                if r["expected"]["direction"] is not None]
    if segments:  # clips scored with segment_frames
        summary["segment_direction"] = sum(d == want for d, want in segments) / len(segments)
        summary["segment_still"] = sum(d == "none" for d, _ in segments) / len(segments)
    return summary

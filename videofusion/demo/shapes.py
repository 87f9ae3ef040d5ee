"""Synthetic "moving shapes" clips: one saturated coloured shape gliding across a plain background.

The data set of the built-in demo model and of the prompt-adherence evaluator
(:mod:`videofusion.demo.evaluation`). Everything is a pure function of a :class:`ShapeSpec`, so a clip
is reproducible from its spec alone, and a spec from ``(seed, index, split)`` alone.

Vocabulary: :data:`COLOURS` x :data:`SHAPES` x :data:`DIRECTIONS` (72 combinations), minus the
:data:`HELD_OUT` ones kept for testing compositional generalisation. Captions always contain the
core form ``"a <colour> <shape> moving <direction>"``. :data:`EXTRA_COLOURS` (orange) are outside that
vocabulary: data for teaching the model a new word, only when asked for.

Geometry (pixels, origin at the top-left corner, y grows downwards): a shape of size ``s`` is a
circle of diameter ``s``, an axis-aligned square of side ``s``, or an upright isosceles triangle
of base and height ``s``; ``s`` is a fraction (:data:`SIZES`) of ``min(height, width)``. The
shape is rendered with 4x4 supersampling (antialiased edges) and never leaves the frame.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
import torch

from ..io.video import clip_to_tensor

# Saturated colours, RGB 0..255, hues about 60 degrees apart (red 0, yellow 60, green 120, cyan 180,
# blue 240, magenta 300): unambiguous by hue on a neutral background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 235),
    "yellow": (240, 220, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
}
# Colours the built-in demo model never saw, for teaching it a new word with a LoRA (docs/lora.md):
# ShapesDataset(extra_colours=...) paints a share of its clips in them, and the evaluator tells them apart
# from COLOURS only when asked (extra_colours=...). Orange: hue 31 degrees, between red (0) and yellow (54).
EXTRA_COLOURS: dict[str, tuple[int, int, int]] = {
    "orange": (245, 140, 30),
}
_ALL_COLOURS = {**COLOURS, **EXTRA_COLOURS}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Pixels per frame on a 64-pixel frame, scaled with the frame extent along the motion; capped so the
# whole path fits in the frame.
SPEEDS: dict[str, float] = {"slow": 1.0, "normal": 2.0, "fast": 3.0}
# Shape size as a fraction of min(height, width).
SIZES: dict[str, float] = {"small": 0.2, "medium": 0.28, "large": 0.36}
# Neutral greys (mixing with a grey keeps a colour's hue), RGB 0..255.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"dark": (24, 24, 24), "light": (232, 232, 232)}

# ~10% of the 72 (colour, shape, direction) combinations, never sampled for training. Every colour,
# shape and direction, and every pair of them, still appears in training in other combinations.
# "a red circle moving left" (the demo prompt) stays in training.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset({
    ("red", "square", "up"),
    ("green", "circle", "left"),
    ("blue", "triangle", "right"),
    ("blue", "circle", "down"),
    ("yellow", "square", "down"),
    ("magenta", "circle", "right"),
    ("cyan", "triangle", "up"),
})

# What the built-in demo model was trained to read: "a <colour> <shape> moving <direction>".
PROMPT_FORM = "a <colour> <shape> moving <direction>"
GRAMMAR_WORDS = frozenset({"a", "an", "the", "moving"})


def unknown_words(prompt: str) -> list[str]:
    """The words of ``prompt`` the demo model has no meaning for (it was trained on :data:`PROMPT_FORM`
    captions only), in order, each once."""
    known = GRAMMAR_WORDS | set(COLOURS) | set(SHAPES) | set(DIRECTIONS)
    words = re.findall(r"\w+", prompt.lower())
    return list(dict.fromkeys(w for w in words if w not in known))


def vocabulary_note() -> str:
    """One line telling a user what the demo model understands."""
    return (f"the built-in demo model understands prompts of the form '{PROMPT_FORM}': colours "
            f"{', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; directions {', '.join(DIRECTIONS)}")


SPLITS = ("train", "heldout")
_SPEED_WORDS = {"slow": "slowly", "normal": "steadily", "fast": "quickly"}
_SUPERSAMPLE = 4


def _check_choice(name: str, value, accepted) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {sorted(accepted)}, got {value!r}")


def _check_positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_geometry(num_frames, height, width) -> None:
    _check_positive_int("num_frames", num_frames)
    _check_positive_int("height", height, 8)
    _check_positive_int("width", width, 8)


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one clip.

    ``start`` is the ``(x, y)`` starting centre as fractions in [0, 1] of the range of starts that
    keep the whole path inside the frame (0 = leftmost / topmost), so one spec fits any frame size.
    ``noise`` is the standard deviation (0..1 intensity units) of a static Gaussian texture on the
    background, drawn from ``seed``; 0 gives a plain background.
    """

    colour: str
    shape: str
    direction: str
    speed: str = "normal"
    size: str = "medium"
    background: str = "dark"
    start: tuple[float, float] = (0.5, 0.5)
    noise: float = 0.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "start", tuple(self.start))  # a list would make the spec unhashable
        _check_choice("colour", self.colour, _ALL_COLOURS)
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("direction", self.direction, DIRECTIONS)
        _check_choice("speed", self.speed, SPEEDS)
        _check_choice("size", self.size, SIZES)
        _check_choice("background", self.background, BACKGROUNDS)
        if len(self.start) != 2 or not all(0.0 <= float(v) <= 1.0 for v in self.start):
            raise ValueError(f"start must be two fractions (x, y) in [0, 1], got {self.start!r}")
        if not 0.0 <= self.noise <= 0.5:
            raise ValueError(f"noise must be in [0, 0.5], got {self.noise!r}")


def caption(spec: ShapeSpec, detailed: bool = False) -> str:
    """``"a red circle moving left"``; with ``detailed``, size, speed and background are added:
    ``"a small red circle moving left slowly on a dark background"`` (the core words stay together).
    A colour that starts with a vowel takes "an": ``"an orange circle moving left"``.
    """
    if not detailed:
        article = "an" if spec.colour[0] in "aeiou" else "a"
        return f"{article} {spec.colour} {spec.shape} moving {spec.direction}"
    return (f"a {spec.size} {spec.colour} {spec.shape} moving {spec.direction} "
            f"{_SPEED_WORDS[spec.speed]} on a {spec.background} background")


def combos(split: str = "train") -> list[tuple[str, str, str]]:
    """The (colour, shape, direction) combinations of a split, in a fixed order.

    ``"train"``: every combination not in :data:`HELD_OUT`; ``"heldout"``: those in it.
    """
    _check_choice("split", split, SPLITS)
    every = product(COLOURS, SHAPES, DIRECTIONS)
    return [c for c in every if (c in HELD_OUT) == (split == "heldout")]


def _motion(direction: str) -> tuple[int, bool]:
    """The axis a direction moves along (0 = x, 1 = y) and whether it moves towards the origin (left, up)."""
    return (0 if direction in ("left", "right") else 1), direction in ("left", "up")


def trajectory(spec: ShapeSpec, num_frames: int, height: int, width: int) -> np.ndarray:
    """Centre of the shape's bounding box in each frame, ``(num_frames, 2)`` as (x, y) pixels.

    The shape moves at a constant ``SPEEDS[spec.speed] * extent / 64`` pixels per frame along
    its direction, capped so that the path, shape included, stays inside the frame with a margin of
    3% of the extent (at least 1 pixel).
    """
    size = SIZES[spec.size] * min(height, width)
    moving_axis, backwards = _motion(spec.direction)
    centre = np.empty((num_frames, 2))
    for axis, extent in enumerate((width, height)):
        margin = max(1.0, 0.03 * extent)
        lo, hi = margin + size / 2, extent - margin - size / 2  # feasible range of the centre
        moving = axis == moving_axis
        travel = min(SPEEDS[spec.speed] * extent / 64 * (num_frames - 1), hi - lo) if moving else 0.0
        first = lo + spec.start[axis] * (hi - lo - travel)  # the end of the path nearest the origin
        path = first + np.linspace(0.0, travel, num_frames)
        centre[:, axis] = path[::-1] if backwards and moving else path
    return centre


def coverage(shape: str, cx: float, cy: float, size: float, height: int, width: int) -> np.ndarray:
    """Fraction of each pixel covered by a shape, ``(height, width)`` float32 in [0, 1], by 4x4
    supersampling inside the shape's bounding box.

    ``(cx, cy)``: centre of the bounding box in pixels (pixel ``(i, j)`` spans ``[j, j+1) x [i, i+1)``);
    ``size``: diameter, side, or base and height of the upright triangle, in pixels.
    """
    _check_choice("shape", shape, SHAPES)
    alpha = np.zeros((height, width), np.float32)
    x0, x1 = max(int(np.floor(cx - size / 2)), 0), min(int(np.ceil(cx + size / 2)), width)
    y0, y1 = max(int(np.floor(cy - size / 2)), 0), min(int(np.ceil(cy + size / 2)), height)
    if x1 <= x0 or y1 <= y0:
        return alpha
    s = _SUPERSAMPLE
    xs = x0 + (np.arange((x1 - x0) * s) + 0.5) / s - cx  # sample offsets from the centre
    ys = (y0 + (np.arange((y1 - y0) * s) + 0.5) / s - cy)[:, None]
    half = size / 2
    if shape == "circle":
        inside = xs**2 + ys**2 <= half**2
    elif shape == "square":
        inside = (np.abs(xs) <= half) & (np.abs(ys) <= half)
    else:  # upright triangle: apex at the top centre, base along the bottom edge
        inside = (ys <= half) & (np.abs(xs) <= (ys + half) / 2)
    block = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))  # (rows, s, cols, s) -> (rows, cols)
    alpha[y0:y1, x0:x1] = block
    return alpha


# A trail copy j (1, 2, ...) sits j * TRAIL_GAP shape sizes behind the shape, at TRAIL_ALPHA ** j.
TRAIL_GAP, TRAIL_ALPHA = 0.35, 0.5


def render_clip(spec: ShapeSpec, num_frames: int = 16, height: int = 64, width: int = 64,
                trail: int = 0, rgb: tuple[float, float, float] | None = None) -> np.ndarray:
    """Render ``spec`` as a uint8 array of shape ``(num_frames, height, width, 3)`` (RGB).

    Deterministic: the same spec and geometry give identical bytes. ``height`` and ``width`` are
    in pixels, at least 8. ``trail`` (default 0: none) draws that many faded copies of the shape
    behind it, opposite to its motion (copy j at ``j * TRAIL_GAP`` sizes, opacity ``TRAIL_ALPHA ** j``),
    so every single frame shows which way the shape moves. ``rgb`` (0..255 each, default None: the spec's
    colour) paints the shape in any other colour.
    """
    _check_geometry(num_frames, height, width)
    _check_positive_int("trail", trail, 0)
    if rgb is not None and (len(rgb) != 3 or not all(0.0 <= float(v) <= 255.0 for v in rgb)):
        raise ValueError(f"rgb: must be three values in [0, 255], got {rgb!r}")
    background = np.broadcast_to(np.asarray(BACKGROUNDS[spec.background], np.float32), (height, width, 3))
    if spec.noise > 0:
        texture = np.random.default_rng(spec.seed).standard_normal((height, width, 1), dtype=np.float32)
        background = background + 255.0 * spec.noise * texture  # grey texture, static over the clip
    colour = np.asarray(_ALL_COLOURS[spec.colour] if rgb is None else rgb, np.float32)
    size = SIZES[spec.size] * min(height, width)
    clip = np.empty((num_frames, height, width, 3), np.uint8)
    axis, backwards = _motion(spec.direction)
    behind = np.zeros(2)
    behind[axis] = TRAIL_GAP * size * (1.0 if backwards else -1.0)  # (x, y) pixels per trail copy
    for f, (cx, cy) in enumerate(trajectory(spec, num_frames, height, width)):
        frame = background
        for j in range(trail, 0, -1):  # farthest copy first, the shape itself last
            alpha = TRAIL_ALPHA**j * coverage(spec.shape, cx + j * behind[0], cy + j * behind[1], size, height, width)
            frame = frame * (1.0 - alpha[..., None]) + colour * alpha[..., None]
        alpha = coverage(spec.shape, cx, cy, size, height, width)[..., None]  # (h, w, 1)
        frame = frame * (1.0 - alpha) + colour * alpha
        clip[f] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return clip


def _spec_for(seed: int, index: int, split: str, start_spread: float = 1.0, cross_spread: float = 1.0) -> ShapeSpec:
    """Spec ``index`` of the stream ``(seed, split)``: depends on nothing else (not on ``n``)."""
    rng = np.random.default_rng([seed, index, SPLITS.index(split)])
    options = combos(split)
    colour, shape, direction = options[rng.integers(len(options))]
    speed = list(SPEEDS)[rng.integers(len(SPEEDS))]  # the draw order is the data set: keep it
    size = list(SIZES)[rng.integers(len(SIZES))]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    start = [float(rng.uniform()) for _ in range(2)]  # (x, y) fractions
    axis, backwards = _motion(direction)
    entry = 1.0 if backwards else 0.0  # the start fraction of a path entering at the far side
    start[axis] = entry + (start[axis] - entry) * start_spread
    start[1 - axis] = 0.5 + (start[1 - axis] - 0.5) * cross_spread  # across the motion: around the middle
    return ShapeSpec(
        colour=colour, shape=shape, direction=direction, speed=speed, size=size, background=background,
        start=tuple(start),
        noise=float(rng.choice([0.0, 0.02])),
        seed=int(rng.integers(2**31)),
    )


def sample_specs(n: int, seed: int, split: str = "train", start_spread: float = 1.0,
                 cross_spread: float = 1.0) -> list[ShapeSpec]:
    """``n`` random specs of a split, deterministic from ``seed`` (a non-negative int).

    Combination, speed, size and background are uniform; half the clips get a faint (0.02) background
    texture. The start is uniform in [0, 1]^2 with ``start_spread`` 1 (default); a smaller spread keeps
    the start along the motion within that fraction of the far side, so the shape crosses the frame
    (0: always enters at the far side); a ``cross_spread`` under 1 likewise keeps the start across the
    motion within that fraction of the range around the middle (0: the shape moves along the centre line).
    Spec ``i`` depends only on ``(seed, i, split, start_spread, cross_spread)``, so
    ``sample_specs(10, s)[:5] == sample_specs(5, s)``.
    """
    _check_positive_int("n", n, 0)
    _check_positive_int("seed", seed, 0)
    _check_choice("split", split, SPLITS)
    for name, spread in (("start_spread", start_spread), ("cross_spread", cross_spread)):
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {spread!r}")
    return [_spec_for(seed, i, split, start_spread, cross_spread) for i in range(n)]


class ShapesDataset(torch.utils.data.Dataset):
    """Map-style dataset of ``n`` synthetic clips rendered on the fly (nothing stored on disk).

    Item ``i`` is ``{"video": float32 tensor (3, num_frames, height, width) in [-1, 1],
    "caption": str}``, a pure function of ``(seed, i, split, start_spread, cross_spread)``, the geometry and
    ``trail`` (see :func:`render_clip`); ``specs[i]`` is its :class:`ShapeSpec`. ``detailed_captions``: True
    gives every clip the detailed caption (size, speed and background added, :func:`caption`), a float that
    share of the clips (drawn per clip from ``seed``). ``extra_colours`` (names from :data:`EXTRA_COLOURS`,
    default none) repaints ``extra_share`` of the clips, drawn per clip from ``seed``, in one of them (shape,
    motion and the rest unchanged; the caption names the new colour); the other clips are exactly those
    of the data set without them. Batches from a ``DataLoader`` are ``(batch, 3, num_frames, height, width)``.
    """

    def __init__(self, n: int, seed: int = 0, num_frames: int = 16, height: int = 64, width: int = 64,
                 split: str = "train", detailed_captions: bool | float = False, start_spread: float = 1.0,
                 trail: int = 0, cross_spread: float = 1.0, extra_colours: tuple[str, ...] | list[str] = (),
                 extra_share: float = 0.5):
        _check_geometry(num_frames, height, width)
        _check_positive_int("trail", trail, 0)
        share = float(detailed_captions)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"detailed_captions must be a bool or a share in [0, 1], got {detailed_captions!r}")
        if isinstance(extra_colours, str):
            raise TypeError(f"extra_colours must be a list of names, got the string {extra_colours!r}")
        extra_colours = list(extra_colours)
        for name in extra_colours:
            _check_choice("extra colour", name, EXTRA_COLOURS)
        if not 0.0 < extra_share <= 1.0:
            raise ValueError(f"extra_share must be in (0, 1], got {extra_share!r}")
        self.specs = sample_specs(n, seed, split, start_spread, cross_spread)
        if extra_colours:  # clip i is repainted with probability extra_share, drawn from (seed, i) alone
            for i in range(n):
                rng = np.random.default_rng([seed, i, 8])
                if rng.random() < extra_share:
                    colour = extra_colours[rng.integers(len(extra_colours))]
                    self.specs[i] = dataclasses.replace(self.specs[i], colour=colour)
        # clip i has the detailed caption with probability `share`, drawn from (seed, i) alone
        self.detailed = [share == 1.0 or (share > 0.0 and np.random.default_rng([seed, i, 7]).random() < share)
                         for i in range(n)]
        self.trail = trail
        self.num_frames, self.height, self.width = num_frames, height, width

    def __len__(self) -> int:
        return len(self.specs)

    def caption(self, index: int) -> str:
        """Clip ``index``'s caption (the detailed form for the clips drawn for it), without rendering."""
        return caption(self.specs[index], self.detailed[index])

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clips")
        spec = self.specs[index]
        clip = render_clip(spec, self.num_frames, self.height, self.width, self.trail)  # (f, h, w, 3) uint8
        return {"video": clip_to_tensor(clip), "caption": self.caption(index)}  # video: (3, f, h, w)


def foreground_mask(frames: torch.Tensor, threshold: float = 0.1) -> torch.Tensor:
    """Pixels that differ from their frame's top-left pixel by more than ``threshold`` in some channel:
    the shape on the plain background of synthetic clips. ``(..., 3, h, w)`` in [-1, 1] -> bool
    ``(..., 1, h, w)``. Meaningful only for plain-background data (not for natural videos)."""
    return (frames - frames[..., :1, :1]).abs().amax(-3, keepdim=True) > threshold


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically: a temp file in the same folder, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0, num_frames: int = 16,
                 height: int = 64, width: int = 64, split: str = "train", fps: int = 8,
                 detailed_captions: bool = False) -> list[Path]:
    """Write ``n`` clips to ``out_dir`` in the training folder layout and return the mp4 paths.

    Clip ``i`` becomes ``<id>.mp4`` (H.264 yuv420p via :func:`videofusion.io.video.export_to_video`,
    so slightly lossy; ``fps`` frames per second) and ``<id>.txt`` (its caption, no newline), with
    ``id = f"{i:06d}"``; ``specs.jsonl`` records each clip's id, caption and :class:`ShapeSpec`
    fields. Every file is written atomically. The clips are those of
    ``ShapesDataset(n, seed, num_frames, height, width, split, detailed_captions)``.
    """
    _check_geometry(num_frames, height, width)
    _check_positive_int("fps", fps)
    specs = sample_specs(n, seed, split)
    from videofusion.io.video import export_to_video  # lazy: PyAV is needed only to write files

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, records = [], []
    for i, spec in enumerate(specs):
        name = f"{i:06d}"
        export_to_video(render_clip(spec, num_frames, height, width), out / f"{name}.mp4", fps=fps)  # atomic
        text = caption(spec, detailed_captions)
        _write_text(out / f"{name}.txt", text)
        records.append(json.dumps({"id": name, "caption": text, **dataclasses.asdict(spec)}))
        paths.append(out / f"{name}.mp4")
    _write_text(out / "specs.jsonl", "".join(r + "\n" for r in records))
    return paths

"""Prompt weighting on the built-in demo model: does up-weighting one colour of a two-colour prompt move the colour?

    python bench/prompt_weighting_demo.py [--seeds 16] [--pairs red/blue cyan/yellow]
                                          [--weights 0.5 0.8 1 1.25 1.5 2] [--frames 8] [--steps 25]
                                          [--guidance-scale 7.5] [--batch-size 8] [--threads 1] [--json PATH]

The demo model (``videofusion.demo``, 64x64) was trained on one colour per prompt ("a red circle moving
left"). Given two colours before the shape, "a A B circle moving left", it still paints one colour, and
which one depends on both words: red beats blue in either order, "a cyan yellow circle" comes out green
(between the two hues), "a red yellow" is yellow but "a yellow red" is red. So for each pair A/B (default
red/blue, where A wins at weight 1, and cyan/yellow, which mixes) and each weight w the pipeline, with
``enable_prompt_weighting()``, makes one video per seed (0 .. seeds-1, the same seeds for every weight) of

    a (A:w) B circle moving left      (A weighted)
    a A (B:w) circle moving left      (B weighted)

Weight 1 is always run (added if not given; it is one prompt for both sides, shown in both blocks of a
pair). Up-weighting A should move the colour toward A and down-weighting it toward B; the other way round
for B. The plain prompt "a A B circle moving left" is also generated with weighting off, and its frames
are compared bit for bit with weight 1's (``(A:1)`` parses to the plain text, so they must be equal).

Each video is read from its pixels by :func:`videofusion.demo.evaluation.analyse_clip`. Columns of the
table, one row per (pair, weighted colour, weight): ``share A`` / ``share B`` the share of videos whose
colour is read as A / B; ``other`` the share read as anything else (a colour in between, a blank video,
or frames that are not finite: ``others`` counts them by name, ``blank`` being no colour and ``nan``
non-finite frames); ``hue pos.`` the mean over the videos with a colour of the shape colour's hue placed
on the arc from A's hue (0) to B's (1), the shorter way round (red/blue passes magenta, 0.5; values below
0 or above 1 lie beyond A or B), to show a trend where the classifications saturate; ``emb. change``
how far the weighted prompt's CLIP embedding is from the plain prompt's, ||e_w - e_1|| / ||e_1|| (0 at
weight 1; 1 if weighting zeroed it; ``nan`` if it is not finite); ``s/video`` the seconds per video (the
batched calls' time / their videos). ``--json PATH`` writes the settings, the check, the rows and every
video's reading.

Pairs must be at most 150 degrees apart in hue (the arc from A to B is then unambiguous). Videos have
``--frames`` frames (default 8, half of the 16 the model was trained on, for speed; checked on these two
pairs, 7 prompts each, 4 seeds: the same colour was read at 8 and at 16 frames in 54 of 56 videos; at 4
frames and 16 in 49); steps and guidance default to the demo's (25, 7.5). The default 16 seeds (24 prompts
of 16 videos, about 11 minutes on 1 thread) suffice for this model, whose colour for a prompt varies
little with the seed. Torch uses ``--threads`` CPU threads (default 1); calls are batched ``--batch-size``
videos at a time, one generator per video, so a video does not depend on the batch it is in.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videofusion.demo import DEMO_DEFAULTS, DEMO_MODEL_PATH  # noqa: E402

PAIRS = ("red/blue", "cyan/yellow")
WEIGHTS = (0.5, 0.8, 1.0, 1.25, 1.5, 2.0)
MAX_HUE_GAP = 150.0  # degrees between a pair's hues; beyond, the arc from A to B is ambiguous
HEADER = ("| pair | weighted | weight | videos | share A | share B | other | hue pos. | emb. change | s/video "
          "| others |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=16, help="videos per prompt, seeds 0..N-1 (default 16)")
    p.add_argument("--pairs", nargs="+", default=list(PAIRS),
                   help="colour pairs A/B, prompt 'a A B <shape> moving <direction>' (default red/blue cyan/yellow)")
    p.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS),
                   help="weights given to one colour at a time, > 0; 1 is always run (default 0.5 0.8 1 1.25 1.5 2)")
    p.add_argument("--frames", type=int, default=8, help="frames per video (default 8; the model's own: 16)")
    p.add_argument("--steps", type=int, default=DEMO_DEFAULTS["num_inference_steps"],
                   help="num_inference_steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=DEMO_DEFAULTS["guidance_scale"],
                   help="classifier-free guidance (default 7.5)")
    p.add_argument("--shape", default="circle", help="the shape the prompts name (default circle)")
    p.add_argument("--direction", default="left", help="the direction the prompts name (default left)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per pipeline call (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--model", default=str(DEMO_MODEL_PATH), help="model folder (default: the demo model)")
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    return p


def hues() -> dict[str, float]:
    """Hue in degrees of each training colour (:data:`videofusion.demo.shapes.COLOURS`)."""
    import numpy as np

    from videofusion.demo.evaluation import _hue
    from videofusion.demo.shapes import COLOURS
    return {name: _hue(np.asarray(rgb, np.float64) / 255.0) for name, rgb in COLOURS.items()}


def angle(to: float, frm: float) -> float:
    """Signed hue difference ``to - frm`` in degrees, in [-180, 180)."""
    return (to - frm + 180.0) % 360.0 - 180.0


def hue_position(hue: float, a: str, b: str, table: dict[str, float]) -> float:
    """``hue`` on the shorter arc from ``a``'s hue (0) to ``b``'s (1); outside [0, 1] beyond either end."""
    return angle(hue, table[a]) / angle(table[b], table[a])


def parse_pairs(p: argparse.ArgumentParser, pairs: list[str]) -> list[tuple[str, str]]:
    table = hues()
    out = []
    for text in pairs:
        parts = text.split("/")
        if len(parts) != 2 or not all(parts):
            p.error(f"--pairs: {text!r}; expected two colours as A/B, e.g. red/blue")
        a, b = parts
        for c in (a, b):
            if c not in table:
                p.error(f"--pairs: {c!r} in {text!r} is not a colour of the demo model; choose from {list(table)}")
        if a == b:
            p.error(f"--pairs: {text!r} names one colour twice")
        gap = abs(angle(table[b], table[a]))
        if gap > MAX_HUE_GAP:
            p.error(f"--pairs: {text!r}: the hues are {gap:.0f} degrees apart, more than {MAX_HUE_GAP:.0f} "
                    f"(the arc from one to the other is ambiguous); pick colours closer in hue")
        out.append((a, b))
    if len(set(out)) != len(out):
        p.error(f"--pairs: {pairs} repeats a pair")
    return out


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    """Refuse bad options (exit code 2) before anything loads; the pairs as (A, B)."""
    from videofusion.demo.shapes import DIRECTIONS, SHAPES
    if args.seeds < 1:
        p.error(f"--seeds: {args.seeds}; expected at least 1")
    for w in args.weights:
        if not (w > 0 and math.isfinite(w)):
            p.error(f"--weights: {w}; expected finite numbers > 0")
    if len(set(args.weights)) != len(args.weights):
        p.error(f"--weights: {args.weights} repeats a value")
    if args.frames < 2:
        p.error(f"--frames: {args.frames}; expected at least 2")
    if args.steps < 1:
        p.error(f"--steps: {args.steps}; expected at least 1")
    if not args.guidance_scale >= 0:
        p.error(f"--guidance-scale: {args.guidance_scale}; expected a number >= 0")
    if args.batch_size < 1:
        p.error(f"--batch-size: {args.batch_size}; expected at least 1")
    if args.threads < 1:
        p.error(f"--threads: {args.threads}; expected at least 1")
    if args.shape not in SHAPES:
        p.error(f"--shape: {args.shape!r}; choose from {list(SHAPES)}")
    if args.direction not in DIRECTIONS:
        p.error(f"--direction: {args.direction!r}; choose from {list(DIRECTIONS)}")
    if not Path(args.model).is_dir():
        p.error(f"--model: {args.model} is not a folder")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json: the folder of {args.json} does not exist")
    return parse_pairs(p, args.pairs)


def weighted_prompt(a: str, b: str, weighted: str | None, weight: float, shape: str, direction: str) -> str:
    """``"a (red:1.5) blue circle moving left"``; the plain prompt when ``weighted`` is None."""
    words = [f"({c}:{weight:g})" if c == weighted else c for c in (a, b)]
    return f"a {words[0]} {words[1]} {shape} moving {direction}"


def shape_colour(clip):
    """The (shape - background) RGB colour that :func:`~videofusion.demo.evaluation.analyse_clip` classifies
    (its steps 1-3), for its hue."""
    import numpy as np

    from videofusion.demo.evaluation import _as_clip, _box_blur
    clip = _as_clip(clip)
    n = clip.shape[0]
    smooth = _box_blur(clip)
    strips = (smooth[:, :2], smooth[:, -2:], smooth[:, :, :2], smooth[:, :, -2:])
    background = np.median(np.concatenate([s.reshape(n, -1, 3) for s in strips], axis=1), axis=1)  # (f, 3)
    distance = np.linalg.norm(smooth - background[:, None, None, :], axis=-1)  # (f, h, w)
    core = distance > 0.6 * float(np.median(distance.max(axis=(1, 2))))
    return np.median((clip - background[:, None, None, :])[core], axis=0)  # (3,)


def read(video, a: str, b: str, table: dict[str, float]) -> dict:
    """A video's colour (a name, ``"blank"`` for none, ``"nan"`` for non-finite frames), hue and hue position."""
    import numpy as np

    from videofusion.demo.evaluation import _hue, analyse_clip
    video = np.asarray(video)
    if not np.isfinite(video).all():
        return {"colour": "nan", "hue": None, "hue_position": None}
    colour = analyse_clip(video)["colour"]
    if colour is None:
        return {"colour": "blank", "hue": None, "hue_position": None}
    hue = _hue(shape_colour(video))
    return {"colour": colour, "hue": round(hue, 2), "hue_position": round(hue_position(hue, a, b, table), 4)}


def generate(pipe, prompt: str, seeds: int, batch_size: int, **kwargs):
    """``seeds`` videos of ``prompt`` (video k from a generator seeded k), in batches: (frames, seconds)."""
    import numpy as np
    import torch
    chunks, seconds = [], 0.0
    for start in range(0, seeds, batch_size):
        ks = range(start, min(start + batch_size, seeds))
        t0 = time.perf_counter()
        frames = pipe([prompt] * len(ks), generator=[torch.Generator().manual_seed(k) for k in ks], **kwargs).frames
        seconds += time.perf_counter() - t0
        chunks.append(np.asarray(frames))
    return np.concatenate(chunks), seconds


def embedding(pipe, prompt: str):
    import torch
    device = next(pipe.text_encoder.parameters()).device
    with torch.no_grad():
        return pipe.encode_prompt([prompt], device, 1, False)[0].float()


def summarise(readings: list[dict], a: str, b: str) -> dict:
    n = len(readings)
    colours = [r["colour"] for r in readings]
    positions = [r["hue_position"] for r in readings if r["hue_position"] is not None]
    others = Counter(c for c in colours if c not in (a, b))
    mean = sum(positions) / len(positions) if positions else None
    sd = (math.sqrt(sum((x - mean) ** 2 for x in positions) / (len(positions) - 1))
          if len(positions) > 1 else None)
    return {"videos": n, "share_a": colours.count(a) / n, "share_b": colours.count(b) / n,
            "other": sum(others.values()) / n, "others": dict(others.most_common()),
            "hue_position": mean, "hue_position_sd": sd, "hue_videos": len(positions)}


def fmt(x: float | None, digits: int = 2, none: str = "n/a") -> str:
    return none if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [HEADER, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        others = ", ".join(f"{c} {n}" for c, n in r["others"].items()) or "-"
        lines.append(f"| {r['pair']} | {r['weighted']} | {r['weight']:g} | {r['videos']} | {r['share_a']:.2f} | "
                     f"{r['share_b']:.2f} | {r['other']:.2f} | {fmt(r['hue_position'])} | "
                     f"{fmt(r['embedding_change'], none='nan')} | {r['seconds_per_video']:.2f} | {others} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    pairs = check(p, args)
    weights = sorted(set(args.weights) | {1.0})

    import numpy as np
    import torch

    from videofusion import TextToVideoSDPipeline

    torch.set_num_threads(args.threads)
    pipe = TextToVideoSDPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    call = {"num_frames": args.frames, "num_inference_steps": args.steps, "guidance_scale": args.guidance_scale}
    table_hues = hues()

    rows, checks, videos = [], [], []
    for a, b in pairs:
        name = f"{a}/{b}"
        plain = weighted_prompt(a, b, None, 1.0, args.shape, args.direction)
        pipe.disable_prompt_weighting()
        plain_frames, _ = generate(pipe, plain, args.seeds, args.batch_size, **call)
        plain_embedding = embedding(pipe, plain)
        pipe.enable_prompt_weighting()
        results = {}  # (weighted colour or None, weight) -> row; weight 1 is one prompt for both sides
        for weighted, weight in [(None, 1.0)] + [(c, w) for c in (a, b) for w in weights if w != 1.0]:
            prompt = weighted_prompt(a, b, a if weighted is None else weighted, weight, args.shape, args.direction)
            frames, seconds = generate(pipe, prompt, args.seeds, args.batch_size, **call)
            e = embedding(pipe, prompt)
            change = float((e - plain_embedding).norm() / plain_embedding.norm())
            change = change if math.isfinite(change) else None  # a weighted embedding that is not finite
            readings = [read(v, a, b, table_hues) for v in frames]
            row = {"pair": name, "a": a, "b": b, "prompt": prompt, "weight": weight, **summarise(readings, a, b),
                   "embedding_change": change, "seconds_per_video": seconds / args.seeds}
            results[weighted, weight] = row
            videos += [{"pair": name, "prompt": prompt, "weight": weight, "seed": k, **r}
                       for k, r in enumerate(readings)]
            if weighted is None:
                same = [bool(np.array_equal(x, y, equal_nan=True)) for x, y in zip(frames, plain_frames)]
                checks.append({"pair": name, "plain": plain, "weighted": prompt, "identical": sum(same),
                               "videos": len(same), "embedding_change": change})
            print(f"{prompt}: {a} {row['share_a']:.2f}, {b} {row['share_b']:.2f}, other {row['other']:.2f}, "
                  f"hue position {fmt(row['hue_position'])}, embedding change {fmt(change, none='nan')}, "
                  f"{row['seconds_per_video']:.2f} s per video", flush=True)
        for c in (a, b):
            for w in weights:
                rows.append({**results[(None, 1.0) if w == 1.0 else (c, w)], "weighted": c})

    model = "the demo model" if Path(args.model).resolve() == DEMO_MODEL_PATH.resolve() else args.model
    print(f"\nPrompt weighting on {model}: {args.seeds} seeds per prompt, {args.frames} frames, {args.steps} steps, "
          f"guidance {args.guidance_scale:g}, prompts 'a A B {args.shape} moving {args.direction}', "
          f"{args.threads} thread(s), batches of {args.batch_size}")
    for c in checks:
        verdict = "identical" if c["identical"] == c["videos"] else "DIFFERENT"
        print(f"weight 1 vs plain prompt ({c['pair']}): '{c['weighted']}' (weighting on) and '{c['plain']}' "
              f"(weighting off): {c['identical']}/{c['videos']} videos bit for bit identical: {verdict}")
    print("hue pos.: 0 = colour A's hue, 1 = colour B's (pair A/B); the weight-1 row is the same videos in both "
          "blocks of a pair\n")
    print(table(rows))
    if args.json:
        settings = {k: getattr(args, k) for k in ("seeds", "pairs", "frames", "steps", "guidance_scale", "shape",
                                                  "direction", "batch_size", "threads", "model")}
        settings["weights"] = weights
        Path(args.json).write_text(json.dumps({"settings": settings, "hues": table_hues, "weight_1_check": checks,
                                               "rows": rows, "videos": videos}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Re-prompting a video's colour with video-to-video on the built-in demo model: which strength changes it.

    python bench/video_to_video_demo.py [--seeds 24] [--strengths 0.3 0.4 0.5 0.6 0.7 0.8 0.9]
                                        [--steps 25] [--guidance-scale 7.5] [--batch-size 8] [--threads 1]
                                        [--json PATH]

For each seed k (0 .. seeds-1) the demo model (``videofusion.demo``, 64x64, 16 frames) makes an input video
from a source prompt with ``TextToVideoSDPipeline`` (generator seeded k), then ``VideoToVideoSDPipeline``
(the same weights) re-generates that video for a target prompt of another colour and the same shape and
direction, at every strength (generator seeded k again, so each strength starts from the same input and
the same noise). The (source, target) pairs are taken in turn over the seeds, so each gets seeds/4 videos:

    a red circle moving left     -> a blue circle moving left
    a green circle moving right  -> a yellow circle moving right
    a blue circle moving up      -> a red circle moving up
    a cyan circle moving down    -> a magenta circle moving down

Every video is read back from its pixels with :func:`videofusion.demo.evaluation.score_clip`. Columns of
the table, one row per strength: ``target colour`` is the share of re-generated videos whose colour is
the target's (the edit took), ``source colour kept`` the share still showing the source's colour (the
edit did not take; a colour in between, e.g. magenta for red -> blue, counts in neither), ``direction
kept`` the share moving the way both prompts say (the input's motion survived), ``seconds`` the mean
seconds per re-generated video (the batched call's time / its videos). A line above the table scores
the input videos themselves (source colour and direction as generated, seconds per video); a second
table splits each strength by pair (target colour / source colour kept / direction kept, then how many
videos were read as any other colour, e.g. ``magenta 3``: a hue between the two). ``--json
PATH`` writes the settings, both tables' numbers and every video's readings.

Steps and guidance default to the demo's (25 and 7.5); a strength s runs ``int(steps * s)`` of them.
Torch uses ``--threads`` CPU threads (default 1); calls are batched ``--batch-size`` videos at a time,
one generator per video, so a video's result does not depend on the batch it is in.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videofusion.demo import DEMO_DEFAULTS, DEMO_MODEL_PATH  # noqa: E402

PAIRS = (("red", "blue", "left"), ("green", "yellow", "right"), ("blue", "red", "up"),
         ("cyan", "magenta", "down"))
STRENGTHS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=24, help="videos per strength, seeds 0..N-1 (default 24)")
    p.add_argument("--strengths", type=float, nargs="+", default=list(STRENGTHS),
                   help="video-to-video strengths in (0, 1] (default 0.3 0.4 ... 0.9)")
    p.add_argument("--steps", type=int, default=DEMO_DEFAULTS["num_inference_steps"],
                   help="num_inference_steps of both calls (default 25)")
    p.add_argument("--guidance-scale", type=float, default=DEMO_DEFAULTS["guidance_scale"],
                   help="guidance of the re-generation (default 7.5)")
    p.add_argument("--input-guidance-scale", type=float, default=DEMO_DEFAULTS["guidance_scale"],
                   help="guidance of the input videos (default 7.5)")
    p.add_argument("--shape", default="circle", help="the shape both prompts name (default circle)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per pipeline call (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--model", default=str(DEMO_MODEL_PATH), help="model folder (default: the demo model)")
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    return p


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options (exit code 2) before anything loads."""
    from videofusion.demo.shapes import SHAPES
    if args.seeds < 1:
        p.error(f"--seeds: {args.seeds}; expected at least 1")
    if args.steps < 1:
        p.error(f"--steps: {args.steps}; expected at least 1")
    for s in args.strengths:
        if not 0 < s <= 1:
            p.error(f"--strengths: {s}; expected numbers in (0, 1]")
        if int(args.steps * s) < 1:
            p.error(f"--strengths: {s} runs no step of {args.steps} (int(steps * strength) = 0); "
                    f"raise it or --steps")
    if len(set(args.strengths)) != len(args.strengths):
        p.error(f"--strengths: {args.strengths} repeats a value")
    if args.batch_size < 1:
        p.error(f"--batch-size: {args.batch_size}; expected at least 1")
    if args.threads < 1:
        p.error(f"--threads: {args.threads}; expected at least 1")
    for name in ("guidance_scale", "input_guidance_scale"):
        if not getattr(args, name) >= 0:
            p.error(f"--{name.replace('_', '-')}: {getattr(args, name)}; expected a number >= 0")
    if args.shape not in SHAPES:
        p.error(f"--shape: {args.shape!r}; choose from {list(SHAPES)}")
    if not Path(args.model).is_dir():
        p.error(f"--model: {args.model} is not a folder")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json: the folder of {args.json} does not exist")


def jobs(seeds: int, shape: str) -> list[dict]:
    """Video k: seed k, pair k mod len(PAIRS)."""
    out = []
    for k in range(seeds):
        source, target, direction = PAIRS[k % len(PAIRS)]
        out.append({"seed": k, "pair": f"{source}->{target} {direction}", "source": source, "target": target,
                    "direction": direction, "source_prompt": f"a {source} {shape} moving {direction}",
                    "target_prompt": f"a {target} {shape} moving {direction}"})
    return out


def generate(call, prompts: list[str], seeds: list[int], batch_size: int, per_video: dict | None = None,
             **kwargs):
    """``call`` over ``prompts`` in batches, one generator per video (seeded from ``seeds``), with the
    matching slice of each ``per_video`` argument: (frames (n, f, h, w, 3), seconds in the calls)."""
    import numpy as np
    import torch
    chunks, seconds = [], 0.0
    for start in range(0, len(prompts), batch_size):
        stop = start + batch_size
        extra = {k: v[start:stop] for k, v in (per_video or {}).items()}
        t0 = time.perf_counter()
        frames = call(prompts[start:stop], generator=[torch.Generator().manual_seed(s) for s in seeds[start:stop]],
                      **extra, **kwargs).frames
        seconds += time.perf_counter() - t0
        chunks.append(np.asarray(frames))
    return np.concatenate(chunks), seconds


def share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def summarise(videos: list[dict]) -> dict:
    """Shares of ``videos`` showing the target colour, the source colour and the prompts' direction, and
    how many show each other colour read (``None``: no colour, a blank or grey video)."""
    others = Counter(str(v["colour"]) for v in videos if v["colour"] not in (v["target"], v["source"]))
    return {"videos": len(videos), "target_colour": share([v["colour"] == v["target"] for v in videos]),
            "source_colour_kept": share([v["colour"] == v["source"] for v in videos]),
            "direction_kept": share([v["direction_read"] == v["direction"] for v in videos]),
            "other_colours": dict(others.most_common())}


def table(rows: list[dict]) -> str:
    lines = ["| strength | videos | target colour | source colour kept | direction kept | seconds |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['strength']:.2f} | {r['videos']} | {r['target_colour']:.2f} | "
                     f"{r['source_colour_kept']:.2f} | {r['direction_kept']:.2f} | {r['seconds_per_video']:.2f} |")
    return "\n".join(lines)


def pair_table(rows: list[dict], pairs: list[str]) -> str:
    lines = ["| strength | " + " | ".join(pairs) + " |", "|---:|" + "---|" * len(pairs)]
    for r in rows:
        cells = [f"{c['target_colour']:.2f} / {c['source_colour_kept']:.2f} / {c['direction_kept']:.2f}"
                 + "".join(f", {colour} {n}" for colour, n in c["other_colours"].items())
                 for c in (r["pairs"][name] for name in pairs)]
        lines.append(f"| {r['strength']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check(p, args)

    import torch

    from videofusion import TextToVideoSDPipeline, VideoToVideoSDPipeline
    from videofusion.demo.evaluation import score_clip

    torch.set_num_threads(args.threads)
    v2v = VideoToVideoSDPipeline.from_pretrained(args.model)
    t2v = TextToVideoSDPipeline(**v2v.components)
    for pipe in (v2v, t2v):
        pipe.set_progress_bar_config(disable=True)
    todo = jobs(args.seeds, args.shape)
    seeds = [j["seed"] for j in todo]
    pairs = list(dict.fromkeys(j["pair"] for j in todo))

    inputs, input_seconds = generate(t2v, [j["source_prompt"] for j in todo], seeds, args.batch_size,
                                     num_frames=DEMO_DEFAULTS["num_frames"], num_inference_steps=args.steps,
                                     guidance_scale=args.input_guidance_scale)
    for j, video in zip(todo, inputs):
        read = score_clip(video, j["source_prompt"])["predicted"]
        j["input"] = {"colour": read["colour"], "direction": read["direction"]}
    input_summary = {"videos": len(todo), "source_colour": share([j["input"]["colour"] == j["source"] for j in todo]),
                     "direction": share([j["input"]["direction"] == j["direction"] for j in todo]),
                     "seconds_per_video": input_seconds / len(todo),
                     "pairs": {name: {"source_colour": share([j["input"]["colour"] == j["source"]
                                                              for j in todo if j["pair"] == name]),
                                      "direction": share([j["input"]["direction"] == j["direction"]
                                                          for j in todo if j["pair"] == name])}
                               for name in pairs}}
    print(f"inputs: {len(todo)} videos, source colour {input_summary['source_colour']:.2f}, "
          f"direction {input_summary['direction']:.2f}, {input_summary['seconds_per_video']:.2f} s per video",
          flush=True)

    rows = []
    for strength in args.strengths:
        frames, seconds = generate(v2v, [j["target_prompt"] for j in todo], seeds, args.batch_size,
                                   per_video={"video": inputs}, strength=strength, num_inference_steps=args.steps,
                                   guidance_scale=args.guidance_scale)
        videos = []
        for j, video in zip(todo, frames):
            read = score_clip(video, j["target_prompt"])["predicted"]
            videos.append({**{k: j[k] for k in ("seed", "pair", "source", "target", "direction")},
                           "colour": read["colour"], "direction_read": read["direction"]})
            j.setdefault("outputs", {})[f"{strength:g}"] = {"colour": read["colour"], "direction": read["direction"]}
        row = {"strength": strength, **summarise(videos), "seconds_per_video": seconds / len(videos),
               "pairs": {name: summarise([v for v in videos if v["pair"] == name]) for name in pairs}}
        rows.append(row)
        print(f"strength {strength:g}: target colour {row['target_colour']:.2f}, source colour kept "
              f"{row['source_colour_kept']:.2f}, direction kept {row['direction_kept']:.2f}, "
              f"{row['seconds_per_video']:.2f} s per video", flush=True)

    model = "the demo model" if Path(args.model).resolve() == DEMO_MODEL_PATH.resolve() else args.model
    print(f"\nVideo-to-video re-colouring on {model}: {args.seeds} seeds, {args.steps} steps, "
          f"guidance {args.guidance_scale:g} (inputs {args.input_guidance_scale:g}), shape {args.shape}, "
          f"{args.threads} thread(s), batches of {args.batch_size}")
    print(f"inputs as generated: {len(todo)} videos, source colour {input_summary['source_colour']:.2f}, "
          f"direction {input_summary['direction']:.2f}, {input_summary['seconds_per_video']:.2f} s per video\n")
    print(table(rows))
    print("\nper pair: target colour / source colour kept / direction kept, then the count of videos read as "
          "any other colour\n")
    print(pair_table(rows, pairs))
    if args.json:
        settings = {k: getattr(args, k) for k in ("seeds", "strengths", "steps", "guidance_scale",
                                                  "input_guidance_scale", "shape", "batch_size", "threads", "model")}
        Path(args.json).write_text(json.dumps({"settings": settings, "inputs": input_summary, "strengths": rows,
                                               "videos": todo}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

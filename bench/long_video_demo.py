"""Long videos on the built-in demo model (CPU): plain generation, FreeNoise and FIFO-Diffusion side by side.

``eval``: for each method and frame count, the videos of ``videofusion eval-demo`` (the same prompts and
seeds: ``--seeds`` per seen combination, at most ``--max-combos`` of them, ``--heldout-seeds`` per held-out
combination; 25 DDIM steps, guidance 7.5) scored from their pixels: colour and whole-clip direction, the
share of 16-frame segments that show the prompt's direction and the share read as still, and the mean
travel along the prompt's direction in each quarter of the clip (a fraction of the frame; negative: the
wrong way). Every method runs in the same process, on the same videos.

``memory``: FIFO-Diffusion writing its mp4 as frames leave the queue (``output_path``), one process per
frame count: the process's peak resident memory (``ru_maxrss``: model, queue, encoder) and the call's
seconds, per frame and as a linear fit ``seconds = a + b * frames``. ``--modes plain`` adds plain
generation (also streamed to an mp4) for contrast.

    python bench/long_video_demo.py eval --frames 64 --threads 1 --json eval-64.json
    python bench/long_video_demo.py eval --frames 256 --max-combos 4 --heldout-seeds 0 --videos 2
    python bench/long_video_demo.py memory --frames 64 256 1024 --threads 1 --json memory.json

Markdown tables go to stdout, everything measured to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent)]
from videofusion import FIFO, LongVideo, TextToVideoSDPipeline  # noqa: E402
from videofusion.demo import DEMO_DEFAULTS, DEMO_MODEL_PATH  # noqa: E402
from videofusion.demo.evaluation import analyse_clip, score_clip, summarise  # noqa: E402
from videofusion.demo.shapes import combos  # noqa: E402

METHODS = {  # name -> the long_video option of the call
    "plain": None,
    "freenoise": LongVideo(window=16, stride=4),
    "fifo": FIFO(),
    "fifo-n1": FIFO(num_partitions=1),
    "fifo-no-lookahead": FIFO(lookahead=False),
}
LABELS = {"plain": "as is (full temporal attention)", "freenoise": "FreeNoise `--long-video 16:4`",
          "fifo": "FIFO `--long-video fifo` (n=4, lookahead)", "fifo-n1": "FIFO n=1, lookahead",
          "fifo-no-lookahead": "FIFO n=4, no lookahead"}
SEGMENT = DEMO_DEFAULTS["num_frames"]  # 16, the trained length


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("eval", help="prompt adherence per segment and motion per quarter, per method")
    e.add_argument("--frames", type=int, nargs="+", default=[64], help="frame counts (default 64)")
    e.add_argument("--methods", nargs="+", default=["plain", "freenoise", "fifo"], choices=sorted(METHODS))
    e.add_argument("--seeds", type=int, default=1, help="seeds per seen combination (default 1)")
    e.add_argument("--heldout-seeds", type=int, default=1, help="seeds per held-out combination (default 1)")
    e.add_argument("--max-combos", type=int, default=16, help="seen combinations, spread evenly (default 16)")
    e.add_argument("--batch-size", type=int, default=8, help="videos per pipeline call (default 8)")
    e.add_argument("--videos", type=int, default=None, help="only the first N of those videos (quick runs)")
    m = sub.add_parser("memory", help="peak RSS and time per frame, one process per frame count")
    m.add_argument("--frames", type=int, nargs="+", default=[64, 256, 1024])
    m.add_argument("--modes", nargs="+", default=["fifo"], choices=["fifo", "plain"])
    m.add_argument("--prompt", default="a red circle moving left")
    one = sub.add_parser("memory-one", help=argparse.SUPPRESS)  # the child process of ``memory``
    one.add_argument("--frames", type=int, required=True)
    one.add_argument("--mode", choices=["fifo", "plain"], required=True)
    one.add_argument("--prompt", required=True)
    for q in (e, m, one):
        q.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
        q.add_argument("--json", default=None, help="write the measurements here")
    return p


# ------------------------------------------------------------------------------------------------ eval


def jobs(seeds: int, heldout_seeds: int, max_combos: int | None) -> list[tuple[str, str, int]]:
    """(split, prompt, seed) of ``videofusion eval-demo``'s videos: video ``k`` of a split uses seed ``k``."""
    out = []
    for split, n_seeds in (("seen", seeds), ("heldout", heldout_seeds)):
        options = combos("train" if split == "seen" else "heldout")
        if max_combos is not None and split == "seen" and len(options) > max_combos:
            options = [options[round(i * len(options) / max_combos)] for i in range(max_combos)]
        prompts = [f"a {c} {s} moving {d}" for c, s, d in options for _ in range(n_seeds)]
        out += [(split, prompt, k) for k, prompt in enumerate(prompts)]
    return out


def quarter_travel(frames: np.ndarray, direction: str, parts: int = 4) -> list[float]:
    """Travel along ``direction`` in each of ``parts`` equal parts of a ``(f, H, W, 3)`` clip, as a fraction
    of the frame (positive: the prompt's way; NaN where the shape cannot be found)."""
    axis, sign = (0, -1.0) if direction == "left" else (0, 1.0) if direction == "right" else \
        (1, -1.0) if direction == "up" else (1, 1.0)
    size = len(frames) // parts
    out = []
    for i in range(parts):
        moved = analyse_clip(frames[i * size:(i + 1) * size])["displacement"]
        out.append(math.nan if moved is None else sign * moved[axis])
    return out


def evaluate(pipe, method: str, num_frames: int, videos: list, batch_size: int) -> dict:
    """Generate and score ``videos`` with one method: summaries per split and over all videos."""
    results, t0 = [], time.perf_counter()
    for start in range(0, len(videos), batch_size):
        chunk = videos[start:start + batch_size]
        frames = pipe([p for _, p, _ in chunk], num_frames=num_frames, long_video=METHODS[method],
                      num_inference_steps=DEMO_DEFAULTS["num_inference_steps"],
                      guidance_scale=DEMO_DEFAULTS["guidance_scale"],
                      generator=[torch.Generator().manual_seed(seed) for _, _, seed in chunk]).frames
        for (split, prompt, seed), video in zip(chunk, frames):
            scored = score_clip(video, prompt, segment_frames=SEGMENT)
            quarters = quarter_travel(video, scored["expected"]["direction"])
            whole = quarter_travel(video, scored["expected"]["direction"], parts=1)[0]
            results.append({"split": split, "prompt": prompt, "seed": seed, "quarters": quarters,
                            "whole": whole, **scored})
        print(f"  {method} {num_frames} frames: {len(results)}/{len(videos)} videos, "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    summary = {split: summarise([r for r in results if r["split"] == split]) for split in ("seen", "heldout")}
    summary["all"] = summarise(results)
    summary["quarters"] = np.nanmean([r["quarters"] for r in results], axis=0).tolist()
    summary["whole"] = float(np.nanmean([r["whole"] for r in results]))
    summary["seconds"] = time.perf_counter() - t0
    return {"method": method, "frames": num_frames, "summary": summary,
            "videos": [{k: v for k, v in r.items() if k != "predicted"} for r in results]}


def row(cells) -> str:
    """One Markdown table row."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def eval_tables(runs: list[dict]) -> str:
    lines = []
    for frames in sorted({r["frames"] for r in runs}):
        rows = [r for r in runs if r["frames"] == frames]
        n = rows[0]["summary"]["all"]["n"]
        lines += ["", row([f"{frames} frames ({n} videos)", "colour seen / held-out", "direction seen / held-out",
                           f"direction per {SEGMENT} frames (all)", f"still per {SEGMENT} frames (all)", "seconds"]),
                  row(["---"] * 6)]
        for r in rows:
            s = r["summary"]
            lines.append(row([LABELS[r["method"]], f"{pct(s['seen']['colour'])} / {pct(s['heldout']['colour'])}",
                              f"{pct(s['seen']['direction'])} / {pct(s['heldout']['direction'])}",
                              pct(s["all"].get("segment_direction")), pct(s["all"].get("segment_still")),
                              f"{s['seconds']:.0f}"]))
        lines += ["", row([f"{frames} frames: travel along the prompt's direction", "quarter 1", "quarter 2",
                           "quarter 3", "quarter 4", "whole clip"]), row(["---"] * 6)]
        for r in rows:
            q = r["summary"]["quarters"]
            lines.append(row([LABELS[r["method"]], *(f"{v:.2f}" for v in q), f"{r['summary']['whole']:.2f}"]))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ memory


def memory_one(mode: str, num_frames: int, prompt: str) -> dict:
    """One call in this process, written to a temporary mp4: seconds and this process's peak RSS."""
    pipe = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH))
    pipe.set_progress_bar_config(disable=True)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "video.mp4")
        t0, cpu0 = time.perf_counter(), time.process_time()
        pipe(prompt, num_frames=num_frames, num_inference_steps=DEMO_DEFAULTS["num_inference_steps"],
             guidance_scale=DEMO_DEFAULTS["guidance_scale"], generator=[torch.Generator().manual_seed(0)],
             long_video=FIFO() if mode == "fifo" else None, output_path=path)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        size = os.path.getsize(path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"mode": mode, "frames": num_frames, "seconds": seconds, "seconds_per_frame": seconds / num_frames,
            "cpu_seconds": cpu, "cpu_seconds_per_frame": cpu / num_frames,
            "peak_rss_mib": peak, "rss_after_load_mib": loaded, "mp4_bytes": size}


def memory_tables(rows: list[dict]) -> str:
    lines = ["", row(["mode", "frames", "peak RSS (MiB)", "over the loaded model (MiB)", "seconds (CPU seconds)",
                      "seconds per frame (CPU)"]), row(["---"] * 6)]
    for r in rows:
        lines.append(row([r["mode"], r["frames"], f"{r['peak_rss_mib']:.0f}",
                          f"{r['peak_rss_mib'] - r['rss_after_load_mib']:.0f}",
                          f"{r['seconds']:.0f} ({r['cpu_seconds']:.0f})",
                          f"{r['seconds_per_frame']:.3f} ({r['cpu_seconds_per_frame']:.3f})"]))
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        if len(mine) >= 2:
            frames = [r["frames"] for r in mine]
            b, a = np.polyfit(frames, [r["cpu_seconds"] for r in mine], 1)
            peaks = [r["peak_rss_mib"] for r in mine]
            lines.append(f"\n{mode}: CPU seconds = {a:.1f} + {b:.3f} x frames (least squares); peak RSS spread "
                         f"{(max(peaks) - min(peaks)) / min(peaks):.1%} (max / min - 1)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "memory-one":
        print(json.dumps(memory_one(args.mode, args.frames, args.prompt)))
        return 0
    if args.command == "memory":
        rows = []
        for mode in args.modes:
            for frames in args.frames:
                cmd = [sys.executable, __file__, "memory-one", "--frames", str(frames), "--mode", mode,
                       "--prompt", args.prompt, "--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        print(memory_tables(rows))
        result = rows
    else:
        pipe = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH))
        pipe.set_progress_bar_config(disable=True)
        videos = jobs(args.seeds, args.heldout_seeds, args.max_combos)[:args.videos]
        result = [evaluate(pipe, method, frames, videos, args.batch_size)
                  for frames in args.frames for method in args.methods]
        print(eval_tables(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"argv": sys.argv[1:], "runs": result}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

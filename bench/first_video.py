"""The command line's first video: process start to file written, with our CLIP text model and with transformers'.

    python bench/first_video.py [--runs 5] [--warmup 1] [--variants default demo transformers] [--importtime]

Each run is a fresh process running the real command (the installed ``videofusion`` script beside this Python,
else ``python -m videofusion.apps.main``)::

    videofusion generate "a red circle moving left" --seed 0 -o OUT.mp4 --overwrite -q

``default`` is that command as a new user types it: the built-in default model (the demo's 4-step student)
with our CLIP text encoder and tokenizer; ``demo`` adds ``--model demo``: the 25-step demo model;
``transformers`` is ``demo`` with ``VIDEOFUSION_CLIP=transformers`` in its environment, which loads
transformers' classes (and pays for importing transformers): the command as it was before both. The variants
take turns (A B C A B C ...) so a busy machine slows them alike, after
``--warmup`` untimed runs of each. The table shows medians: ``wall`` (process start to exit, the file
written), and from the command's own printed times ``load`` (the pipeline from its folder) and ``generate``
(the denoising and decoding); ``rest`` is wall minus those two: interpreter start, imports, option checks and
writing the mp4. The printed times have 0.1 s resolution. ``cpu`` is the process's CPU seconds (user +
system), which a busy machine inflates much less than wall time. ``--importtime`` adds one run per variant under
``python -X importtime`` and lists the most expensive imports by top-level package.
"""
from __future__ import annotations

import argparse
import os
import resource
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

PROMPT = "a red circle moving left"
# variant -> (environment, more generate options)
VARIANTS = {"default": ({}, ()), "demo": ({}, ("--model", "demo")),
            "transformers": ({"VIDEOFUSION_CLIP": "transformers"}, ("--model", "demo"))}
HEAVY = ("transformers", "diffusers", "gradio", "ray")  # none of these belongs on the generate path
_TIMES = re.compile(r"generated in ([\d.]+) s .*loaded in ([\d.]+) s")
_IMPORT = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


@dataclass
class Run:
    """One command: seconds from process start to exit, and the command's printed load and generate seconds."""

    variant: str
    wall_s: float
    load_s: float
    gen_s: float
    cpu_s: float = 0.0  # user + system seconds of the process
    imports: dict[str, float] = field(default_factory=dict)  # with importtime: top-level package -> self s

    @property
    def rest_s(self) -> float:
        """Interpreter start, imports, option checks and writing the file."""
        return self.wall_s - self.load_s - self.gen_s


def command(output: str | os.PathLike, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command line of one run (``extra``: more ``generate`` options)."""
    script = Path(sys.executable).with_name("videofusion")
    start = [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "videofusion.apps.main"]
    return [*start, "generate", PROMPT, "--seed", "0", "-o", str(output), "--overwrite", "-q", *extra]


def run_once(variant: str, output: str | os.PathLike, extra: list[str] | tuple[str, ...] = (),
             importtime: bool = False) -> Run:
    """Run the command once as ``variant`` (a key of :data:`VARIANTS`); RuntimeError with its stderr if it fails."""
    if variant not in VARIANTS:
        raise ValueError(f"variant: must be one of {list(VARIANTS)}, got {variant!r}")
    env = {k: v for k, v in os.environ.items() if k != "VIDEOFUSION_CLIP"}
    env.update(VARIANTS[variant][0])
    argv = command(output, (*VARIANTS[variant][1], *extra))
    if importtime:
        argv = [argv[0], "-X", "importtime", *argv[1:]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    times = _TIMES.search(result.stdout)
    if result.returncode != 0 or times is None:
        raise RuntimeError(f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr[-3000:]}")
    return Run(variant, wall, float(times[2]), float(times[1]), cpu, import_costs(result.stderr) if importtime else {})


def import_costs(importtime_text: str) -> dict[str, float]:
    """Seconds of ``python -X importtime`` output summed per top-level package (each module's own time)."""
    costs: Counter = Counter()
    for m in _IMPORT.finditer(importtime_text):
        costs[m[4].split(".")[0]] += int(m[1]) / 1e6
    return dict(costs)


def check_video(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(frames, width, height)`` of a video file, every frame decoded; ValueError if it is not a video."""
    import av
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            return frames, stream.width, stream.height
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"{path} is not a readable video: {e}") from None


def table(runs: list[Run]) -> str:
    """The medians per variant as a Markdown table, and the ratio of the wall medians (first variant = 1)."""
    variants = list(dict.fromkeys(r.variant for r in runs))
    lines = ["| variant | runs | wall s (median) | cpu s | load s | generate s | rest s (start, imports, write) "
             "| ratio |", "|---|---|---|---|---|---|---|---|"]
    base = None
    for v in variants:
        mine = [r for r in runs if r.variant == v]
        med = {k: statistics.median(getattr(r, k) for r in mine)
               for k in ("wall_s", "cpu_s", "load_s", "gen_s", "rest_s")}
        base = base or med["wall_s"]
        lines.append(f"| {v} | {len(mine)} | {med['wall_s']:.2f} | {med['cpu_s']:.2f} | {med['load_s']:.1f} | "
                     f"{med['gen_s']:.1f} | {med['rest_s']:.2f} | {med['wall_s'] / base:.2f}x |")
    return "\n".join(lines)


def import_table(run: Run, top: int = 10) -> str:
    """The ``top`` most expensive top-level packages of one ``--importtime`` run, and the heavy ones present."""
    rows = sorted(run.imports.items(), key=lambda kv: -kv[1])[:top]
    heavy = [p for p in HEAVY if p in run.imports]
    return "\n".join([f"imports of {run.variant}: {sum(run.imports.values()):.2f} s in all "
                      f"(heavy packages imported: {', '.join(heavy) or 'none'})",
                      *(f"  {s:6.3f} s  {name}" for name, s in rows)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="timed runs per variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per variant first (default 1)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME",
                   help=f"which commands: {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--importtime", action="store_true", help="also list the import costs of each variant")
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error(f"--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}")
    out_dir = Path(tempfile.mkdtemp(prefix="first-video-"))
    try:
        print(f"command: {' '.join(command(out_dir / 'OUT.mp4'))}")
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, PYTHONDONTWRITEBYTECODE="
              f"{os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}", flush=True)
        for _ in range(args.warmup):
            for v in args.variants:
                run_once(v, out_dir / f"{v}.mp4")
        runs = []
        for i in range(args.runs):
            for v in args.variants:
                runs.append(run_once(v, out_dir / f"{v}.mp4"))
                print(f"run {i + 1} {v}: {runs[-1].wall_s:.2f} s ({runs[-1].cpu_s:.2f} s CPU)", flush=True)
        for v in args.variants:
            frames, width, height = check_video(out_dir / f"{v}.mp4")
            print(f"{v}: {frames} frames {width}x{height}")
        print(table(runs))
        if args.importtime:
            for v in args.variants:
                print(import_table(run_once(v, out_dir / f"{v}.mp4", importtime=True)))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

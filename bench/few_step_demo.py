"""A few-step student of the built-in demo model next to its teacher: prompt adherence and generation time.

    python bench/few_step_demo.py [--student videofusion/demo/model-4step] [--teacher videofusion/demo/model]
                                  [--student-steps 4] [--teacher-steps 25] [--guidance-scale 7.5]
                                  [--seeds 2] [--heldout-seeds 4] [--max-combos N] [--timing-videos 8]
                                  [--batch-size 8] [--threads 1] [--baselines] [--json PATH]

Both models run ``videofusion eval-demo``'s full set by default (:func:`videofusion.demo.evaluate.evaluate_demo`:
2 seeds for each of the 65 seen colour/shape/direction combinations, 4 for each of the 7 held-out ones; video
k of a split has seed k for both models), and the colour, direction and shape are read back from the pixels.
The student (``videofusion distill``, an LCMScheduler folder) samples ``--student-steps`` steps with its
embedded guidance (one UNet call per step); the teacher ``--teacher-steps`` DDIM steps with classifier-free
guidance (two). Both at ``--guidance-scale`` (default 7.5, the demo's).

Time: ``--timing-videos`` single-video calls per model (prompts of the seen set, seeds 0..n-1), the two models
alternating call by call after one warm-up call each, so that other load on the machine falls on both alike.
Columns ``s/video`` (wall clock) and ``CPU s/video`` (this process's CPU time: with ``--threads 1`` the work
itself, whatever else runs) are the medians; ``speed-up`` is the teacher's median over the student's, for both.
The score columns' ``eval s`` is the wall time of each model's evaluation (batched ``--batch-size`` videos).
``--baselines`` adds two rows without distillation, at the student's step count: the teacher with DDIM and
classifier-free guidance, and the teacher's UNet under an LCMScheduler (classifier-free guidance too).
``--json PATH`` writes the settings, every row's summaries and every video's readings.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from videofusion.demo import DEMO_DEFAULTS, DEMO_FAST_MODEL_PATH, DEMO_MODEL_PATH  # noqa: E402

STUDENT = DEMO_FAST_MODEL_PATH


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default=str(STUDENT), help="the few-step model folder (default: the demo's 4-step)")
    p.add_argument("--teacher", default=str(DEMO_MODEL_PATH), help="the model it was distilled from (default: demo)")
    p.add_argument("--student-steps", type=int, default=4, help="the student's steps (default 4)")
    p.add_argument("--teacher-steps", type=int, default=DEMO_DEFAULTS["num_inference_steps"],
                   help="the teacher's steps (default 25)")
    p.add_argument("--guidance-scale", type=float, default=DEMO_DEFAULTS["guidance_scale"],
                   help="guidance of both (default 7.5)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per seen combination (default 2)")
    p.add_argument("--heldout-seeds", type=int, default=4, help="seeds per held-out combination (default 4)")
    p.add_argument("--max-combos", type=int, default=None, help="at most this many seen combinations (default all)")
    p.add_argument("--timing-videos", type=int, default=8, help="single-video calls timed per model (default 8)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per call in the evaluation (default 8)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--baselines", action="store_true",
                   help="also the teacher at the student's steps, with DDIM and with LCMScheduler (no distillation)")
    p.add_argument("--json", metavar="PATH", help="write the results to this JSON file")
    return p


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad options (exit code 2) before anything loads."""
    for name in ("student_steps", "teacher_steps", "batch_size", "threads", "timing_videos"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: {getattr(args, name)}; expected at least 1")
    if args.seeds < 0 or args.heldout_seeds < 0 or args.seeds + args.heldout_seeds == 0:
        p.error(f"--seeds, --heldout-seeds: {args.seeds}, {args.heldout_seeds}; expected numbers >= 0, not both 0")
    if args.max_combos is not None and args.max_combos < 1:
        p.error(f"--max-combos: {args.max_combos}; expected at least 1")
    if not args.guidance_scale >= 1:
        p.error(f"--guidance-scale: {args.guidance_scale}; expected a number >= 1")
    for name in ("student", "teacher"):
        if not (Path(getattr(args, name)) / "model_index.json").is_file():
            p.error(f"--{name}: {getattr(args, name)} is not a pipeline folder (no model_index.json)")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json: the folder of {args.json} does not exist")


def time_calls(pipes: dict, steps: dict, prompts: list[str], guidance_scale: float) -> dict:
    """Per model, the wall and CPU seconds of single-video calls, the models alternating call by call."""
    import torch
    seconds = {name: {"wall": [], "cpu": []} for name in pipes}
    for name, pipe in pipes.items():  # warm-up: first-call allocations and lazy imports
        pipe(prompts[0], num_inference_steps=steps[name], guidance_scale=guidance_scale)
    for k, prompt in enumerate(prompts):
        for name, pipe in pipes.items():
            wall, cpu = time.perf_counter(), time.process_time()
            pipe(prompt, num_inference_steps=steps[name], guidance_scale=guidance_scale,
                 generator=torch.Generator().manual_seed(k))
            seconds[name]["wall"].append(time.perf_counter() - wall)
            seconds[name]["cpu"].append(time.process_time() - cpu)
    return seconds


def with_lcm_scheduler(folder: str, out: Path) -> str:
    """A copy of the pipeline folder ``folder`` at ``out`` whose scheduler is an LCMScheduler built from its own
    config (same weights: a baseline without distillation)."""
    from videofusion import LCMScheduler
    from videofusion.schedulers import get_scheduler_class
    shutil.copytree(folder, out)
    index = json.loads((out / "model_index.json").read_text())
    own = get_scheduler_class(index["scheduler"][1]).from_pretrained(str(out), subfolder="scheduler")
    LCMScheduler.from_config(own.config).save_pretrained(str(out / "scheduler"))
    (out / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "LCMScheduler"]}))
    return str(out)


def table(rows: list[dict]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"
    lines = ["| model | steps | UNet evaluations per step | videos (seen + held-out) | colour seen / held-out | "
             "direction seen / held-out | shape seen / held-out | s/video | CPU s/video | eval s |",
             "|---|---:|---:|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        s, h = r["report"]["seen"], r["report"]["heldout"]
        lines.append(f"| {r['name']} | {r['steps']} | {r['unet_calls']} | {s['n']} + {h['n']} | "
                     f"{pct(s['colour'])} / {pct(h['colour'])} | {pct(s['direction'])} / {pct(h['direction'])} | "
                     f"{pct(s['shape'])} / {pct(h['shape'])} | {r['wall']:.3f} | {r['cpu']:.3f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check(p, args)

    import torch

    from videofusion import DiffusionPipeline
    from videofusion.demo.evaluate import evaluate_demo
    from videofusion.demo.shapes import combos

    torch.set_num_threads(args.threads)
    models = {"teacher": (args.teacher, args.teacher_steps), "student": (args.student, args.student_steps)}
    with tempfile.TemporaryDirectory() as scratch:
        if args.baselines:
            models["teacher, DDIM"] = (args.teacher, args.student_steps)
            models["teacher, LCMScheduler"] = (with_lcm_scheduler(args.teacher, Path(scratch) / "lcm"),
                                               args.student_steps)
        pipes, rows = {}, []
        for name, (folder, steps) in models.items():
            pipes[name] = DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
            pipes[name].set_progress_bar_config(disable=True)
        prompts = [f"a {c} {s} moving {d}" for c, s, d in combos("train")][:args.timing_videos]
        prompts += prompts[:max(0, args.timing_videos - len(prompts))]
        seconds = time_calls(pipes, {name: steps for name, (_, steps) in models.items()}, prompts,
                             args.guidance_scale)
        for name, (folder, steps) in models.items():
            t0 = time.perf_counter()
            report = evaluate_demo(folder, seeds=args.seeds, heldout_seeds=args.heldout_seeds,
                                   max_combos=args.max_combos, batch_size=args.batch_size, num_inference_steps=steps,
                                   guidance_scale=args.guidance_scale, progress=False)
            embedded = pipes[name].unet.config.time_cond_proj_dim is not None
            rows.append({"name": f"{name} ({type(pipes[name].scheduler).__name__})", "folder": folder,
                         "steps": steps, "unet_calls": 1 if embedded or args.guidance_scale <= 1 else 2,
                         "report": report, "wall": statistics.median(seconds[name]["wall"]),
                         "cpu": statistics.median(seconds[name]["cpu"]), "eval_s": time.perf_counter() - t0,
                         "seconds": seconds[name]})
            print(f"{name}: evaluated in {rows[-1]['eval_s']:.0f} s", flush=True)
    print(table(rows))
    teacher, student = rows[:2]
    speed = {"wall": teacher["wall"] / student["wall"], "cpu": teacher["cpu"] / student["cpu"]}
    print(f"speed-up of the student: {speed['wall']:.1f}x (wall), {speed['cpu']:.1f}x (CPU); "
          f"{len(prompts)} single-video calls each, {args.threads} thread(s), guidance {args.guidance_scale}")
    if args.json:
        from videofusion.io.saving import atomic_write_text
        out = {"settings": vars(args), "speed_up": speed,
               "models": [{k: v for k, v in r.items() if k != "report"} | {
                   "seen": r["report"]["seen"], "heldout": r["report"]["heldout"], "videos": r["report"]["videos"]}
                   for r in rows]}
        atomic_write_text(args.json, json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

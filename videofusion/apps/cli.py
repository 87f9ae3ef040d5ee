"""The ``videofusion`` command: parse, call the public API, write files. No model logic here."""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

DTYPES = ("auto", "float32", "float16", "bfloat16")


class CLIError(Exception):
    """A user mistake reported as one line and exit code 2."""


def default_model() -> str:
    """The built-in demo model shipped in the package, if present."""
    from ..demo import DEMO_MODEL_PATH
    if not DEMO_MODEL_PATH.is_dir():
        raise CLIError("--model: no built-in demo model is installed; pass a model folder or Hub id")
    return str(DEMO_MODEL_PATH)


def slug(prompt: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")
    return (words[:60].rstrip("-") or "video")


def pick_device(name: str):
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {name} was asked for but CUDA is not available; use --device cpu")
    return device


def pick_dtype(name: str, device):
    import torch
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def long_video_arg(text: str):
    """``--long-video WINDOW[:STRIDE]`` (frames, stride 4 by default) -> a LongVideo."""
    from ..long_video import LongVideo
    window, _, stride = text.partition(":")
    try:
        return LongVideo(int(window), int(stride) if stride else min(4, int(window)))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected WINDOW[:STRIDE] in frames, 1 <= STRIDE <= WINDOW, "
                                         f"e.g. 16:4 ({e})") from None


def add_generate(sub) -> None:
    from ..schedulers import SCHEDULERS
    p = sub.add_parser("generate", help="generate a video from a prompt",
                       description="Generate a video from a text prompt and write it as mp4 or gif.")
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--model", default=None, help="pipeline folder or Hub id (default: the built-in demo model)")
    p.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    p.add_argument("--negative-prompt", default=None, help="what to steer away from")
    p.add_argument("--num-frames", type=int, default=None, help="frames (default: 16)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 50 for ModelScope)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default 9.0)")
    p.add_argument("--scheduler", default=None, choices=sorted(SCHEDULERS), metavar="NAME",
                   help="sampler: " + ", ".join(sorted(SCHEDULERS)) + " (default: the model's)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a random one, printed)")
    p.add_argument("--height", type=int, default=None, help="pixels, divisible by 8 (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="pixels, divisible by 8 (default: the model's)")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the file (default 8)")
    p.add_argument("--output", "-o", default=None, help="output .mp4 or .gif (default: <prompt>.mp4)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--offload", default="none", choices=("none", "model", "sequential"),
                   help="keep weights in CPU memory: per model, or per layer (slowest, least GPU memory)")
    p.add_argument("--vae-slicing", action="store_true", help="decode one frame at a time (less memory)")
    p.add_argument("--noise", default="independent", choices=("independent", "decomposed"),
                   help="initial noise; decomposed = VideoFusion's shared base + per-frame residual")
    p.add_argument("--noise-ratio", type=float, default=0.5, help="weight of the shared base noise (default 0.5)")
    p.add_argument("--long-video", type=long_video_arg, default=None, metavar="WINDOW[:STRIDE]",
                   help="FreeNoise windowed temporal attention + noise rescheduling for long videos, e.g. 16:4")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    import torch
    from .. import DiffusionPipeline
    from ..demo import generation_defaults
    from ..pipelines.text_to_video import check_sizes
    from ..schedulers import make_scheduler
    from ..io.video import export_to_gif, export_to_video

    output = Path(args.output) if args.output else Path(slug(args.prompt) + ".mp4")
    if output.suffix.lower() not in (".mp4", ".gif"):
        raise CLIError(f"--output: {output} must end in .mp4 or .gif")
    if not output.parent.exists():
        raise CLIError(f"--output: folder {output.parent} does not exist")
    if args.fps <= 0:
        raise CLIError(f"--fps: must be > 0, got {args.fps}")
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    model = args.model or default_model()
    defaults = generation_defaults(model)
    given = {k: v for k, v in dict(num_frames=args.num_frames, num_inference_steps=args.steps,
                                   height=args.height, width=args.width).items() if v is not None}
    check_sizes(**{"height": 8, "width": 8, "num_frames": 1, "num_inference_steps": 1, **given})
    seed = args.seed if args.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())

    t0 = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=dtype, variant=args.variant)
    if args.scheduler:
        pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler.config)
    if args.offload == "model":
        pipe.enable_model_cpu_offload(device=device if device.type != "cpu" else None)
    elif args.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device if device.type != "cpu" else None)
    else:
        pipe.to(device)
    if args.vae_slicing:
        pipe.enable_vae_slicing()
    pipe.set_progress_bar_config(disable=args.quiet, desc="denoising")
    load_s = time.perf_counter() - t0

    settings = {k: v for k, v in dict(num_frames=args.num_frames, num_inference_steps=args.steps,
                                      guidance_scale=args.guidance_scale, height=args.height,
                                      width=args.width).items() if v is not None}
    settings = {**defaults, **settings}
    t1 = time.perf_counter()
    frames = pipe(args.prompt, negative_prompt=args.negative_prompt,
                  generator=[torch.Generator("cpu").manual_seed(seed)], noise=args.noise,
                  noise_ratio=args.noise_ratio, long_video=args.long_video, **settings).frames[0]
    gen_s = time.perf_counter() - t1
    if output.suffix.lower() == ".gif":
        export_to_gif(frames, str(output), fps=args.fps)
    else:
        export_to_video(frames, str(output), fps=args.fps)
    print(f"{output}  ({len(frames)} frames {frames.shape[2]}x{frames.shape[1]}, seed {seed}; "
          f"generated in {gen_s:.1f} s, loaded in {load_s:.1f} s)")
    return 0


def add_training(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune a pipeline's UNet on videos with captions",
                       description="Train from a JSON/TOML config (keys: see videofusion.training.TrainConfig). "
                                   "Resumes from OUTPUT_DIR/checkpoint.pt when it exists.")
    p.add_argument("config", help="a .toml or .json training config")
    p.add_argument("--steps", type=int, default=None, help="override the config's step count")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--noise-ratio", type=float, default=None, help="override VideoFusion's lambda")
    p.add_argument("--unet-from", default=None, metavar="FOLDER",
                   help="override the config's unet_from (pipeline folder whose UNet weights start training)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.set_defaults(run=run_train)

    p = sub.add_parser("init-demo", help="write the starting folder of the built-in demo model (trains its VAE)")
    p.add_argument("output_dir")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-from", default=None, metavar="FOLDER",
                   help="reuse the trained vae/ of this pipeline folder instead of training one")
    p.add_argument("--token-embedding-scale", type=float, default=50.0,
                   help="multiply the random text encoder's token embeddings (default 50: words stay apart)")
    p.add_argument("--vae-downsample", type=int, default=8, choices=(4, 8),
                   help="pixels per latent each way: 8 (8x8 latents, default) or 4 (16x16, four times the work)")
    p.add_argument("--anchor-colours", action=argparse.BooleanOptionalAction, default=True,
                   help="colour-anchored latents: channels 0-2 are each cell's whitened mean colour (default on)")
    p.add_argument("--broadcast-caption", action=argparse.BooleanOptionalAction, default=False,
                   help="text encoder whose padding positions carry every word of the caption (default off)")
    p.set_defaults(run=run_init_demo)


def run_train(args) -> int:
    import torch
    from ..training.train import TrainConfig, train
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(steps=args.steps, output_dir=args.output_dir,
                                       noise_ratio=args.noise_ratio, unet_from=args.unet_from).items()
                 if v is not None}
    summary = train(TrainConfig.from_file(args.config, **overrides), resume=not args.no_resume)
    print(f"{summary['config']['output_dir']}/model  ({summary['steps']} steps, "
          f"final loss {summary['final_loss_avg50']:.4f}, {summary['seconds']:.0f} s)")
    return 0


def run_init_demo(args) -> int:
    from ..demo.recipe import init_demo_pipeline
    print(init_demo_pipeline(args.output_dir, vae_steps=args.vae_steps, seed=args.seed,
                             vae_from=args.vae_from, token_embedding_scale=args.token_embedding_scale,
                             vae_downsample=args.vae_downsample, anchor_colours=args.anchor_colours,
                             broadcast_caption=args.broadcast_caption))
    return 0


def add_eval_demo(sub) -> None:
    p = sub.add_parser("eval-demo", help="score a moving-shapes model's prompt adherence from its pixels",
                       description="Generate 'a <colour> <shape> moving <direction>' videos for seen and "
                                   "held-out combinations and read colour, direction and shape back.")
    p.add_argument("--model", default=None, help="pipeline folder (default: the built-in demo model)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per seen combination (default 2)")
    p.add_argument("--heldout-seeds", type=int, default=4, help="seeds per held-out combination (default 4)")
    p.add_argument("--max-combos", type=int, default=None, help="at most this many seen combinations")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the demo's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default 7.5)")
    p.add_argument("--num-frames", type=int, default=16, help="frames per video (default 16)")
    p.add_argument("--long-video", type=long_video_arg, default=None, metavar="WINDOW[:STRIDE]",
                   help="FreeNoise long-video option for every video, e.g. 16:4 (default: off)")
    p.add_argument("--noise", default=None, choices=("independent", "decomposed"))
    p.add_argument("--noise-ratio", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--output", "-o", default=None, help="write the full report as JSON here")
    p.set_defaults(run=run_eval_demo)


def run_eval_demo(args) -> int:
    import json
    import torch
    from ..demo import evaluate_demo
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    report = evaluate_demo(args.model, seeds=args.seeds, heldout_seeds=args.heldout_seeds,
                           max_combos=args.max_combos, num_frames=args.num_frames,
                           num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                           noise=args.noise, noise_ratio=args.noise_ratio,
                           long_video=args.long_video)
    columns = {"colour": "colour", "direction": "direction", "shape": "shape", "all": "all"}
    if any("segment_direction" in report[split] for split in ("seen", "heldout")):  # longer than 16 frames
        columns.update(segment_direction="direction per 16 frames", segment_still="still per 16 frames")
    print(f"{'split':8} {'videos':>6} " + " ".join(f"{title:>9}" for title in columns.values()))
    for split in ("seen", "heldout"):
        r = report[split]
        cells = (f"{'-' if r.get(key) is None else format(r[key], '.1%'):>{max(9, len(title))}}"
                 for key, title in columns.items())
        print(f"{split:8} {r['n']:>6} " + " ".join(cells))
    print(f"({time.perf_counter() - t0:.0f} s; settings {report['settings']})")
    if args.output:
        from ..io.saving import atomic_write_text
        atomic_write_text(args.output, json.dumps(report, indent=1, default=str) + "\n")
    return 0


def add_web(sub) -> None:
    from .web import add_arguments
    p = sub.add_parser("web", help="serve a web page that generates videos (needs the web extra)",
                       description="A Gradio page like the model's Space: prompt, settings, a video that plays "
                                   "in the page. Requests are queued and served one at a time.")
    add_arguments(p)
    p.set_defaults(run=run_web)


def run_web(args) -> int:
    from .web import serve
    return serve(args)


def add_batch(sub) -> None:
    from ..schedulers import SCHEDULERS
    p = sub.add_parser("batch", help="generate a video for every line of a JSONL file, on Ray (resumable)",
                       description="Generate DIR/<id>.mp4 for each line {\"prompt\": ..., optional \"id\", \"seed\", "
                                   "\"negative_prompt\", \"num_frames\", \"num_inference_steps\", \"guidance_scale\", "
                                   "\"height\", \"width\", \"noise\", \"noise_ratio\"} of PROMPTS, plus DIR/manifest.jsonl. "
                                   "Rerunning skips finished items. Needs Ray: pip install 'videofusion[distributed]'.")
    p.add_argument("prompts", help="a .jsonl file, one JSON object per line")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--model", default=None, help="pipeline folder or Hub id, readable on every worker "
                   "(default: the built-in demo model)")
    p.add_argument("--variant", default=None, help="weight file variant, e.g. fp16")
    p.add_argument("--scheduler", default=None, choices=sorted(SCHEDULERS), metavar="NAME",
                   help="sampler: " + ", ".join(sorted(SCHEDULERS)) + " (default: the model's)")
    p.add_argument("--negative-prompt", default=None, help="default for items that set none")
    p.add_argument("--num-frames", type=int, default=None, help="default frames per item (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="default denoising steps (default: the model's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="default guidance (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="default pixels, divisible by 8")
    p.add_argument("--width", type=int, default=None, help="default pixels, divisible by 8")
    p.add_argument("--noise", default=None, choices=("independent", "decomposed"), help="default initial noise")
    p.add_argument("--noise-ratio", type=float, default=None, help="default weight of the shared base noise")
    p.add_argument("--fps", type=float, default=8, help="frames per second of the files (default 8)")
    p.add_argument("--workers", type=int, default=1, help="Ray actors, one pipeline each (default 1)")
    p.add_argument("--num-cpus-per-worker", type=float, default=1, help="CPUs Ray reserves per worker (default 1)")
    p.add_argument("--num-gpus-per-worker", type=float, default=0,
                   help="GPUs per worker, e.g. 1, or 0.5 to share one between two (default 0: CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: its CPUs)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="default: cuda if the worker has a GPU (--num-gpus-per-worker), else cpu")
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a running Ray cluster ('auto' or host:port); default: start a local Ray")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(run=run_batch_cli)


def run_batch_cli(args) -> int:
    try:
        import ray  # noqa: F401  (the optional extra)
    except ImportError:
        raise CLIError("videofusion batch needs Ray: pip install 'videofusion[distributed]'") from None
    from .batch import BatchError, BatchOptions, run_batch
    defaults = {k: v for k, v in dict(negative_prompt=args.negative_prompt, num_frames=args.num_frames,
                                      num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                                      height=args.height, width=args.width, noise=args.noise,
                                      noise_ratio=args.noise_ratio).items() if v is not None}
    options = BatchOptions(model=args.model or default_model(), variant=args.variant, scheduler=args.scheduler,
                           device=args.device, dtype=args.dtype, fps=args.fps, defaults=defaults,
                           workers=args.workers, num_cpus_per_worker=args.num_cpus_per_worker,
                           num_gpus_per_worker=args.num_gpus_per_worker, threads=args.threads,
                           ray_address=args.ray_address)
    try:
        s = run_batch(args.prompts, args.output, options, progress=not args.quiet)
    except BatchError as e:
        print(f"videofusion batch: error: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {s['skipped'] + s['generated']}/{s['items']} videos ({s['generated']} generated, "
          f"{s['skipped']} already done), {s['failed']} failed, {s['invalid']} invalid line(s); {s['seconds']:.0f} s")
    return 1 if s["failed"] or s["invalid"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videofusion", description="Text-to-video with UNet3D latent diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_generate(sub)
    add_training(sub)
    add_eval_demo(sub)
    add_web(sub)
    add_batch(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CLIError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"videofusion {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

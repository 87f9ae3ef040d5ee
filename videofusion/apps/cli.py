"""The ``videofusion`` commands that train and measure models: ``train``, ``distill``, ``init-demo`` and ``eval-demo``
(``generate`` is :mod:`videofusion.apps.generate`). Parse, check, call the public API, write files."""
from __future__ import annotations

import argparse
import time

from ..io.saving import atomic_write_text
from .common import CLIError, long_video_arg, lora_arg, model_folder, read_loras, resolve_model, set_threads


def add_parsers(sub) -> None:
    """Register ``train``, ``distill``, ``init-demo`` and ``eval-demo`` on an argparse subparsers object."""
    add_training(sub)
    add_eval_demo(sub)


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
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.set_defaults(run=run_train)

    p = sub.add_parser("distill", help="distil a pipeline into a few-step student (latent consistency distillation)",
                       description="Distil the config's model into a student that samples in a few steps with "
                                   "LCMScheduler (keys: see videofusion.training.distill.DistillConfig; "
                                   "configs/distill-demo.toml). Writes OUTPUT_DIR/model (a LoRA student: "
                                   "OUTPUT_DIR/lora); resumes from "
                                   "OUTPUT_DIR/checkpoint.pt when it exists.")
    p.add_argument("config", help="a .toml or .json distillation config")
    p.add_argument("--steps", type=int, default=None, help="override the config's step count")
    p.add_argument("--output-dir", default=None, help="override the config's output_dir")
    p.add_argument("--noise-ratio", type=float, default=None, help="override VideoFusion's lambda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    p.set_defaults(run=run_distill)

    p = sub.add_parser("init-demo", help="write the starting folder of the built-in demo model (trains its VAE)")
    p.add_argument("output_dir")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae-from", default=None, metavar="FOLDER",
                   help="reuse the trained vae/ of this pipeline folder instead of training one")
    p.add_argument("--decoder-steps", type=int, default=None, metavar="N",
                   help="fine-tune the VAE's decoder alone on clips in random colours for N steps, so it renders any "
                        "colour (default: the demo recipe's for a VAE trained here, 0 with --vae-from)")
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
    from ..training.train import TrainConfig, train
    set_threads(args.threads)
    overrides = {k: v for k, v in dict(steps=args.steps, output_dir=args.output_dir,
                                       noise_ratio=args.noise_ratio, unet_from=args.unet_from).items()
                 if v is not None}
    summary = train(TrainConfig.from_file(args.config, **overrides), resume=not args.no_resume)
    written = "lora" if summary["config"].get("lora_rank") is not None else "model"  # a LoRA run saves adapters only
    print(f"{summary['config']['output_dir']}/{written}  ({summary['steps']} steps, "
          f"final loss {summary['final_loss_avg50']:.4f}, {summary['seconds']:.0f} s)")
    return 0


def run_distill(args) -> int:
    from ..training.distill import DistillConfig, distill
    set_threads(args.threads)
    overrides = {k: v for k, v in dict(steps=args.steps, output_dir=args.output_dir,
                                       noise_ratio=args.noise_ratio).items() if v is not None}
    summary = distill(DistillConfig.from_file(args.config, **overrides), resume=not args.no_resume)
    print(f"{summary['output']}  ({summary['steps']} steps, final loss {summary['final_loss_avg50']:.4f}, "
          f"{summary['seconds']:.0f} s; sample it in 4 steps, see docs/few-step.md)")
    return 0


def run_init_demo(args) -> int:
    from ..demo.recipe import init_demo_pipeline
    print(init_demo_pipeline(args.output_dir, vae_steps=args.vae_steps, seed=args.seed,
                             vae_from=args.vae_from, token_embedding_scale=args.token_embedding_scale,
                             vae_downsample=args.vae_downsample, anchor_colours=args.anchor_colours,
                             broadcast_caption=args.broadcast_caption, decoder_steps=args.decoder_steps))
    return 0


def add_eval_demo(sub) -> None:
    p = sub.add_parser("eval-demo", help="score a moving-shapes model's prompt adherence from its pixels",
                       description="Generate 'a <colour> <shape> moving <direction>' videos for seen and "
                                   "held-out combinations and read colour, direction and shape back.")
    p.add_argument("--model", default="demo", help="pipeline folder or a built-in name (default: demo, the 25-step "
                   "demo model the recipes start from; demo-4step its student)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per seen combination (default 2)")
    p.add_argument("--heldout-seeds", type=int, default=4, help="seeds per held-out combination (default 4)")
    p.add_argument("--max-combos", type=int, default=None, help="at most this many seen combinations")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the demo's)")
    p.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance (default 7.5)")
    p.add_argument("--num-frames", type=int, default=16, help="frames per video (default 16)")
    p.add_argument("--long-video", type=long_video_arg, default=None, metavar="WINDOW[:STRIDE] | fifo[:P]",
                   help="long-video option for every video: FreeNoise, e.g. 16:4, or FIFO-Diffusion, e.g. fifo:4 "
                        "(default: off)")
    p.add_argument("--noise", default=None, choices=("independent", "decomposed"))
    p.add_argument("--noise-ratio", type=float, default=None)
    p.add_argument("--lora", type=lora_arg, action="append", default=None, metavar="PATH[:SCALE]",
                   help="a LoRA adapter (file, folder or Hub id) at SCALE (default 1) on the model; repeatable")
    p.add_argument("--extra-colours", default=None, metavar="NAME[,NAME]",
                   help="also score 'an orange <shape> moving <direction>' for every shape and direction, and read "
                        "every video's colour among the demo's colours and these (colours the demo never saw, "
                        "e.g. orange, taught by a LoRA)")
    p.add_argument("--extra-seeds", type=int, default=4, help="seeds per extra-colour combination (default 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--output", "-o", default=None, help="write the full report as JSON here")
    p.set_defaults(run=run_eval_demo)


def run_eval_demo(args) -> int:
    import json

    from ..demo.evaluate import evaluate_demo
    from ..demo.shapes import EXTRA_COLOURS
    set_threads(args.threads)
    extra = [] if args.extra_colours is None else [c.strip() for c in args.extra_colours.split(",")]
    if any(c not in EXTRA_COLOURS for c in extra):
        raise CLIError(f"--extra-colours: must be names from {', '.join(EXTRA_COLOURS)} (comma-separated), "
                       f"got {args.extra_colours!r}")
    if args.extra_seeds < 0:
        raise CLIError(f"--extra-seeds: must be a number >= 0, got {args.extra_seeds}")
    extra_videos = args.extra_seeds if extra else 0
    if args.seeds < 0 or args.heldout_seeds < 0 or args.seeds + args.heldout_seeds + extra_videos == 0:
        raise CLIError(f"--seeds, --heldout-seeds: need numbers >= 0, not both 0 (unless --extra-colours); "
                       f"got {args.seeds}, {args.heldout_seeds}")
    loras = read_loras(args.lora)
    model = str(model_folder(resolve_model(args.model)))
    t0 = time.perf_counter()
    report = evaluate_demo(model, seeds=args.seeds, heldout_seeds=args.heldout_seeds,
                           max_combos=args.max_combos, num_frames=args.num_frames,
                           num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                           noise=args.noise, noise_ratio=args.noise_ratio,
                           long_video=args.long_video, loras=loras, extra_colours=extra,
                           extra_seeds=args.extra_seeds)
    report["loras"] = [{"path": path, "scale": scale} for path, scale in args.lora or []]
    columns = {"colour": "colour", "direction": "direction", "shape": "shape", "all": "all"}
    splits = ("seen", "heldout", "extra") if extra else ("seen", "heldout")
    if any("segment_direction" in report[split] for split in splits):  # longer than 16 frames
        columns.update(segment_direction="direction per 16 frames", segment_still="still per 16 frames")
    print(f"{'split':8} {'videos':>6} " + " ".join(f"{title:>9}" for title in columns.values()))
    for split in splits:
        r = report[split]
        cells = (f"{'-' if r.get(key) is None else format(r[key], '.1%'):>{max(9, len(title))}}"
                 for key, title in columns.items())
        print(f"{split:8} {r['n']:>6} " + " ".join(cells))
    loaded = "".join(f"; LoRA {path} x{scale:g}" for path, scale in args.lora or [])
    read = f"; colours read among the demo's and {', '.join(extra)}" if extra else ""
    print(f"({time.perf_counter() - t0:.0f} s; settings {report['settings']}{loaded}{read})")
    if args.output:
        atomic_write_text(args.output, json.dumps(report, indent=1, default=str) + "\n")
    return 0

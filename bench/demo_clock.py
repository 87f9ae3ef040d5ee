"""Experiment, not a shippable model: does a frame clock let the demo UNet learn motion direction?

    python bench/demo_clock.py train CONFIG --unet-from FOLDER --output-dir OUT [--init zeros|sinusoidal]
                                     [--steps N] [--threads T]
    python bench/demo_clock.py score OUT --model FOLDER [--seeds 1 --heldout-seeds 1 --max-combos 16]

docs/demo-model.md explains why the demo UNet might never learn direction: at t = T its frames get
i.i.d. noise and the UNet3D's temporal layers have no position embedding, so only the temporal convs'
zero padding tells frame 3 from frame 12, and ``demo_diagnostics.py layout`` finds no frame-dependent
output. This script tests that explanation. It adds a learned table ``(num_frames, channels)`` to the
output of ``conv_in``, one row per frame, and trains as ``videofusion train`` does. ``--init zeros``
(default) starts from exactly the given UNet; ``--init sinusoidal`` starts the table at the
transformer's sinusoidal position code (values in [-1, 1]), a clock the UNet can read from the first
step. Compare with the same run without the table (``videofusion train CONFIG --unet-from FOLDER``).

The table is not part of the diffusers UNet3D layout. A model trained with it cannot be loaded by
diffusers or by ``videofusion generate``, so ``score`` rebuilds the pipeline here: it loads the
pipeline ``--model`` (the run's starting folder), adds the table and copies in the EMA weights of
``OUT/checkpoint.pt``. It then prints ``demo_diagnostics.py layout``'s table and ``eval-demo``'s scores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

INITS = ("zeros", "sinusoidal")


def sinusoidal_code(num_frames: int, channels: int) -> torch.Tensor:
    """``(num_frames, channels)``: sin and cos of ``k / 10000 ** (2 i / channels)`` (Vaswani et al. 2017)."""
    k = torch.arange(num_frames, dtype=torch.float32)[:, None]  # (f, 1)
    rates = 10000.0 ** (-torch.arange(0, channels, 2, dtype=torch.float32) / channels)  # (c/2,)
    code = torch.zeros(num_frames, channels)
    code[:, 0::2], code[:, 1::2] = torch.sin(k * rates), torch.cos(k * rates)
    return code


def add_frame_clock(unet, num_frames: int, init: str = "zeros") -> torch.nn.Parameter:
    """Register ``conv_in.frame_clock`` (``(num_frames, channels)``, zeros or :func:`sinusoidal_code`)
    and add row ``k`` to frame ``k`` of ``conv_in``'s output. Returns the table."""
    conv_in = unet.conv_in
    if init not in INITS:
        raise ValueError(f"init: must be one of {INITS}, got {init!r}")
    start = torch.zeros(num_frames, conv_in.out_channels)
    if init == "sinusoidal":
        start = sinusoidal_code(num_frames, conv_in.out_channels)
    table = torch.nn.Parameter(start)
    conv_in.register_parameter("frame_clock", table)

    def hook(module, inputs, output):  # output: (b*f, c, h, w)
        bf, c, h, w = output.shape
        if bf % num_frames:
            raise ValueError(f"frame clock: built for {num_frames} frames, got a batch of {bf} frames")
        clocked = output.view(bf // num_frames, num_frames, c, h, w) + table[None, :, :, None, None]
        return clocked.view(bf, c, h, w)  # (b*f, c, h, w)

    conv_in.register_forward_hook(hook)
    return table


def run_train(args) -> None:
    from videofusion.training import train as train_module
    from videofusion.training.train import TrainConfig, train

    config = TrainConfig.from_file(args.config, unet_from=args.unet_from, output_dir=args.output_dir,
                                   **({"steps": args.steps} if args.steps else {}))
    load = train_module._load_unet_weights

    def load_and_clock(unet, folder):  # train() calls this before it builds the optimizer and the EMA
        load(unet, folder)
        add_frame_clock(unet, config.num_frames, args.init)

    train_module._load_unet_weights = load_and_clock
    summary = train(config)
    print(f"{config.output_dir}: {summary['steps']} steps, final loss {summary['final_loss_avg50']:.4f}")


def run_score(args) -> None:
    from demo_diagnostics import layout

    from videofusion import TextToVideoSDPipeline, pipelines
    from videofusion.demo import evaluate_demo

    state = torch.load(Path(args.run) / "checkpoint.pt", map_location="cpu", weights_only=True)
    pipe = TextToVideoSDPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    add_frame_clock(pipe.unet, state["config"]["num_frames"])  # its start does not matter: the EMA replaces it
    params = list(pipe.unet.parameters())
    if len(params) != len(state["ema"]):
        raise ValueError(f"{args.run}: the checkpoint's EMA has {len(state['ema'])} tensors, the clocked UNet "
                         f"{len(params)}; was it trained by this script from {args.model}?")
    with torch.no_grad():
        for p, saved in zip(params, state["ema"]):
            p.copy_(saved)
    print(f"{args.run}: step {state['step']}, clock table norm {pipe.unet.conv_in.frame_clock.norm():.3f}")
    with torch.no_grad():
        layout(pipe, start_spread=args.start_spread, trail=0, draws=args.draws)
    pipelines.DiffusionPipeline.from_pretrained = classmethod(lambda cls, *a, **k: pipe)  # evaluate this pipe
    report = evaluate_demo(args.model, seeds=args.seeds, heldout_seeds=args.heldout_seeds,
                           max_combos=args.max_combos, progress=False)
    for split in ("seen", "heldout"):
        s = report[split]
        print(f"{split}: {s['n']} videos, colour {s['colour']:.1%}, direction {s['direction']:.1%}, "
              f"shape {s['shape']:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("train")
    p.add_argument("--init", choices=INITS, default="zeros", help="the clock table's start (default zeros)")
    p.add_argument("config")
    p.add_argument("--unet-from", required=True, help="pipeline folder whose UNet starts training")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("score")
    p.add_argument("run", help="the output folder of a `train` run")
    p.add_argument("--model", required=True, help="the pipeline folder the run started from (--unet-from)")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--heldout-seeds", type=int, default=1)
    p.add_argument("--max-combos", type=int, default=16)
    p.add_argument("--start-spread", type=float, default=0.1, help="layout: the data the run trained on")
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "train" and args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    run_train(args) if args.what == "train" else run_score(args)


if __name__ == "__main__":
    main()

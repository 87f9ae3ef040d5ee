"""Speed of videofusion against diffusers 0.42.1, side by side in ONE process on the SAME weights.

On CUDA (the real benchmark) it builds the published 1.7B configs of
damo-vilab/text-to-video-ms-1.7b with random weights (bench/reference/text-to-video-ms-1.7b.json; random
weights cost the same time as real ones) and measures, for 256x256x16 (50 DDIM steps), 256x256x64 and
576x320x24 (25 steps):

* UNet classifier-free-guidance step (batch 2) in ms, achieved TFLOP/s and share of the measured fp16
  matmul ceiling, for diffusers eager, diffusers ``torch.compile`` (default mode), videofusion eager and
  videofusion's fast path (``enable_fast_path``, ``--compile``), plus each fast-path part alone (--ablation);
* VAE decode of the frames in ms;
* the end-to-end call in seconds (warm) and its peak allocated GiB;
* the fast path's first-call warm-up (compilation), and with --second-process the warm-up of a fresh
  process that finds the on-disk compile cache;
* output differences: UNet relative L2 against diffusers fp16 eager at every size, and the final frames
  of a 5-step call.

``--tiny`` runs the same table on the CPU with a tiny config in float32 (what CI can run): there the
fast path is off by default, so "videofusion" is the eager pipeline.

    python bench/gpu.py                       # CUDA, fp16, everything (about 10 minutes on an H100)
    python bench/gpu.py --dtype bf16 --sizes 256x256x16
    python bench/gpu.py --tiny                # CPU
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
REFERENCE = HERE / "reference" / "text-to-video-ms-1.7b.json"

TINY_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                 attention_head_dim=8, down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                 up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], sample_size=8)
TINY_VAE = dict(block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                 projection_dim=32, max_position_embeddings=77, vocab_size=49408)
SIZES = {"256x256x16": (256, 256, 16, 50), "256x256x64": (256, 256, 64, 25), "576x320x24": (320, 576, 24, 25)}
TINY_SIZES = {"64x64x8": (64, 64, 8, 10), "64x64x16": (64, 64, 16, 10), "96x64x8": (64, 96, 8, 10)}


# ------------------------------------------------------------------------------------------ setup
def configs(tiny: bool) -> tuple[dict, dict, dict, dict]:
    ref = json.loads(REFERENCE.read_text())
    scheduler = {k: v for k, v in ref["scheduler"].items() if not k.startswith("_")}
    if tiny:
        return TINY_UNET, TINY_VAE, TINY_TEXT, scheduler
    unet = {k: v for k, v in ref["unet"].items() if not k.startswith("_")}
    vae = {k: v for k, v in ref["vae"].items() if not k.startswith("_")}
    text = {k: v for k, v in ref["text_encoder"].items() if k not in ("architectures", "model_type")}
    return unet, vae, text, scheduler


def byte_tokenizer(folder: str):
    """A real CLIPTokenizer over a byte-level vocabulary without merges (tiny files, real code path)."""
    from transformers import CLIPTokenizer

    from videofusion.demo.tokenizer import byte_to_character
    chars = list(byte_to_character().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    Path(folder, "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    Path(folder, "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    """(diffusers pipeline, videofusion pipeline) sharing text encoder, tokenizer and weight values."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel

    import videofusion
    unet_cfg, vae_cfg, text_cfg, sched_cfg = configs(tiny)
    torch.manual_seed(0)
    with device:
        ref_unet = diffusers.UNet3DConditionModel(**unet_cfg).to(dtype).eval()
        ref_vae = diffusers.AutoencoderKL(**vae_cfg).to(dtype).eval()
        text = CLIPTextModel(CLIPTextConfig(**text_cfg)).to(dtype).eval()
        unet = videofusion.UNet3DConditionModel(**unet_cfg).to(dtype).eval()
        vae = videofusion.AutoencoderKL(**vae_cfg).to(dtype).eval()
    unet.load_state_dict(ref_unet.state_dict())
    vae.load_state_dict(ref_vae.state_dict())
    tokenizer = byte_tokenizer(tempfile.mkdtemp())
    ref = diffusers.TextToVideoSDPipeline(vae=ref_vae, text_encoder=text, tokenizer=tokenizer, unet=ref_unet,
                                          scheduler=diffusers.DDIMScheduler.from_config(sched_cfg))
    ours = videofusion.TextToVideoSDPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                             scheduler=videofusion.DDIMScheduler.from_config(sched_cfg))
    for p in (ref, ours):
        p.set_progress_bar_config(disable=True)
    return ref, ours


# ------------------------------------------------------------------------------------------ timing
_START = time.perf_counter()


def note(text: str) -> None:
    """Progress on stderr with the seconds since the start: a run cut off by a time limit (the device
    machine's) still shows what it measured and where the time went (compilation, say)."""
    print(f"[{time.perf_counter() - _START:5.0f} s] {text}", file=sys.stderr, flush=True)


def report(results: list, item: list | tuple) -> None:
    """Append a table row or an output difference to ``results`` and :func:`note` it at once."""
    results.append(item)
    note(" | ".join(f"{v:.2e}" if isinstance(v, float) else str(v) for v in item))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device: torch.device, reps: int, warmup: int = 2) -> float:
    """Median of 3 trials of the mean time of ``reps`` calls, in ms."""
    return interleaved_ms({"fn": fn}, device, reps, warmup)["fn"]


def interleaved_ms(fns: dict, device: torch.device, reps: int, warmup: int = 1, rounds: int = 3) -> dict:
    """label -> median over ``rounds`` of the mean ms of ``reps`` calls. The functions take turns
    within each round, so a busy machine slows each of them alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    trials = {label: [] for label in fns}
    for _ in range(rounds):
        for label, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            sync(device)
            trials[label].append((time.perf_counter() - t0) / reps * 1e3)
    return {label: sorted(ts)[len(ts) // 2] for label, ts in trials.items()}


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul TFLOP/s (8192^3 on CUDA, 1024^3 on the CPU)."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_ms(lambda: a @ a, device, reps=10 if device.type == "cuda" else 3)
    return 2 * n ** 3 / (ms / 1e3) / 1e12


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------ measurements
def unet_inputs(pipe, height, width, frames, device, dtype):
    g = torch.Generator(device).manual_seed(1)
    cfg, scale = pipe.unet.config, pipe.vae_scale_factor
    x = torch.randn(2, cfg.in_channels, frames, height // scale, width // scale, generator=g, device=device,
                    dtype=dtype)
    ctx = torch.randn(2, 77, cfg.cross_attention_dim, generator=g, device=device, dtype=dtype)
    return x, torch.tensor(500, device=device), ctx


def unet_variants(args, ref, ours, device):
    """name -> (callable(x, t, ctx), warm-up seconds of the first call or None)."""
    from videofusion.runtime.fast import FastPath
    variants = {"diffusers eager": lambda x, t, c: ref.unet(x, t, encoder_hidden_states=c).sample}
    if args.compile_reference:
        compiled = torch.compile(ref.unet)
        variants["diffusers compile"] = lambda x, t, c: compiled(x, t, encoder_hidden_states=c).sample
    variants["videofusion eager"] = lambda x, t, c: ours.unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
    fast_parts = {"videofusion fast": FastPath(mode=args.mode)} if args.fast else {}
    if args.ablation:
        fast_parts.update({
            "  + fused qkv only": FastPath(channels_last=False, compile=False),
            "  + channels-last only": FastPath(fuse_qkv=False, compile=False),
            "  + compile only (default mode)": FastPath(fuse_qkv=False, channels_last=False, mode="default"),
            "  + compile only (reduce-overhead)": FastPath(fuse_qkv=False, channels_last=False,
                                                           mode="reduce-overhead"),
        })
    return variants, fast_parts


def run_size(args, ref, ours, device, dtype, name, height, width, frames, steps, ceiling, rows, diffs):
    x, t, ctx = unet_inputs(ours, height, width, frames, device, dtype)
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            ours.unet(x, t, encoder_hidden_states=ctx)
        flops = counter.get_total_flops()
        reference_out = ref.unet(x, t, encoder_hidden_states=ctx).sample
        reps = 10 if device.type == "cuda" else 3
        variants, fast_parts = unet_variants(args, ref, ours, device)
        results, outputs = {}, {}
        for label, fn in variants.items():
            note(f"{name}: first call of {label}")
            t0 = time.perf_counter()
            outputs[label] = fn(x, t, ctx)
            sync(device)
            results[label] = [None, time.perf_counter() - t0]
        timed = interleaved_ms({label: (lambda fn=fn: fn(x, t, ctx)) for label, fn in variants.items()}, device, reps)
        for label in variants:
            results[label][0] = timed[label]
            if label.startswith("videofusion"):
                report(diffs, (name, f"UNet {label}", rel_l2(outputs[label], reference_out)))
        for label, fast in fast_parts.items():
            note(f"{name}: first call of {label.strip()} (compiles)")
            ours.disable_fast_path()
            fast.apply(ours.unet)
            fn = fast.forward(ours.unet)
            t0 = time.perf_counter()
            out = fn(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
            sync(device)
            first = time.perf_counter() - t0
            results[label] = (time_ms(lambda: fn(x, t, encoder_hidden_states=ctx), device, reps), first)
            report(diffs, (name, f"UNet {label.strip()}", rel_l2(out, reference_out)))
            fast.remove(ours.unet)
    base = results["diffusers eager"][0]
    for label, (ms, first) in results.items():
        tflops = flops / (ms / 1e3) / 1e12
        report(rows, [name, f"UNet CFG step: {label}", f"{ms:.2f} ms", f"{tflops:.1f} TFLOP/s "
                     f"({100 * tflops / ceiling:.0f}%)", f"{base / ms:.2f}x", f"first call {first:.1f} s"])

    scale = ours.vae_scale_factor
    latents = torch.randn(frames, ours.vae.config.latent_channels, height // scale, width // scale, device=device,
                          dtype=dtype) / ours.vae.config.scaling_factor
    with torch.no_grad():
        vae_ms = interleaved_ms({"diffusers": lambda: ref.vae.decode(latents).sample,
                                 "videofusion": lambda: ours.vae.decode(latents).sample}, device, reps=2)
    ref_ms, our_ms = vae_ms["diffusers"], vae_ms["videofusion"]
    report(rows, [name, "VAE decode: diffusers / videofusion", f"{ref_ms:.1f} / {our_ms:.1f} ms", "",
                 f"{ref_ms / our_ms:.2f}x", ""])

    call = dict(prompt="Spiderman is surfing", height=height, width=width, num_frames=frames,
                num_inference_steps=steps)
    if device.type == "cuda":
        ours.enable_fast_path(mode=args.mode) if args.fast else ours.disable_fast_path()
    peaks = {}
    note(f"{name}: end to end")
    for label, pipe in (("diffusers", ref), ("videofusion", ours)):
        pipe(**{**call, "num_inference_steps": 2})  # warm-up (and compilation at this size)
        reset_peak(device)
        pipe(**call, generator=torch.Generator(device).manual_seed(0))
        sync(device)
        peaks[label] = peak_gib(device)
    seconds = {label: ms / 1e3 for label, ms in interleaved_ms(
        {"diffusers": lambda: ref(**call, generator=torch.Generator(device).manual_seed(0)),
         "videofusion": lambda: ours(**call, generator=torch.Generator(device).manual_seed(0))},
        device, reps=1, warmup=0, rounds=args.rounds).items()}
    rs, os_ = seconds["diffusers"], seconds["videofusion"]
    peak_text = f"peak {peaks['diffusers']:.2f} / {peaks['videofusion']:.2f} GiB" if device.type == "cuda" else ""
    report(rows, [name, f"end to end, {steps} DDIM steps: diffusers / videofusion", f"{rs:.2f} / {os_:.2f} s",
                 peak_text, f"{rs / os_:.2f}x", ""])

    five = dict(call, num_inference_steps=5)
    a = ref(**five, generator=torch.Generator(device).manual_seed(3)).frames
    b = ours(**five, generator=torch.Generator(device).manual_seed(3)).frames
    report(diffs, (name, "pipeline, 5 steps, final frames", rel_l2(b, a)))


def second_process(args) -> float:
    """Seconds a fresh process takes to build the models and finish its first fast-path UNet call
    at the first size, finding the compile cache the first process wrote."""
    cmd = [sys.executable, __file__, "--_first-call-only", "--dtype", args.dtype_name, "--mode", args.mode,
           "--sizes", args.sizes[0]]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def first_call_only(args, device, dtype) -> None:
    from videofusion.runtime.fast import FastPath
    _, ours = build(args.tiny, device, dtype)
    height, width, frames, _ = (TINY_SIZES if args.tiny else SIZES)[args.sizes[0]]
    x, t, ctx = unet_inputs(ours, height, width, frames, device, dtype)
    fast = FastPath(mode=args.mode).apply(ours.unet)
    with torch.no_grad():
        fast.forward(ours.unet)(x, t, encoder_hidden_states=ctx)
    sync(device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU, float32 (CI)")
    parser.add_argument("--dtype", default=None, choices=["fp16", "bf16", "fp32"],
                        help="default fp16 on CUDA, fp32 with --tiny")
    parser.add_argument("--sizes", nargs="+", default=None, help="HxWxF names (default: all of the mode)")
    parser.add_argument("--mode", default="max-autotune-no-cudagraphs", help="torch.compile mode of the fast path")
    parser.add_argument("--no-fast", dest="fast", action="store_false", help="skip videofusion's fast path")
    parser.add_argument("--no-compile-reference", dest="compile_reference", action="store_false",
                        help="skip diffusers + torch.compile")
    parser.add_argument("--ablation", action="store_true", help="also time each fast-path part alone")
    parser.add_argument("--second-process", action="store_true",
                        help="time a fresh process's warm-up with the compile cache")
    parser.add_argument("--rounds", type=int, default=3, help="alternating end-to-end runs per pipeline")
    parser.add_argument("--steps", type=int, default=None, help="override every size's denoising steps")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--_first-call-only", dest="first_call_only", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json}: its folder does not exist")

    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.tiny:
        sys.exit("bench/gpu.py: no CUDA device; run with --tiny for the CPU version")
    args.dtype_name = args.dtype or ("fp32" if args.tiny else "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype_name]
    sizes = TINY_SIZES if args.tiny else SIZES
    args.sizes = args.sizes or list(sizes)
    unknown = [s for s in args.sizes if s not in sizes]
    if unknown:
        sys.exit(f"--sizes: {unknown} not among {list(sizes)}")
    if device.type == "cpu":
        args.compile_reference = args.compile_reference and not args.tiny
        args.fast = args.fast and not args.tiny  # the CPU default path is eager
    if args.first_call_only:
        first_call_only(args, device, dtype)
        return

    import diffusers

    from videofusion.io.saving import atomic_write_text
    note("building diffusers' and videofusion's models")
    ref, ours = build(args.tiny, device, dtype)
    ceiling = matmul_ceiling(device, dtype)
    env = (f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}, "
           f"diffusers {diffusers.__version__}, {str(dtype).replace('torch.', '')}, "
           f"matmul ceiling {ceiling:.1f} TFLOP/s, {'tiny' if args.tiny else 'published 1.7B'} config, "
           f"{torch.get_num_threads()} CPU threads")
    print(env, flush=True)
    rows, diffs = [], []

    def save_json() -> None:  # after every size too: a run cut off by a time limit keeps what it measured
        if args.json:
            atomic_write_text(args.json, json.dumps({"env": env, "rows": rows, "diffs": diffs}, indent=1))

    for name in args.sizes:
        height, width, frames, steps = sizes[name]
        steps = args.steps or steps
        run_size(args, ref, ours, device, dtype, name, height, width, frames, steps, ceiling, rows, diffs)
        note(f"done {name}")
        save_json()
    if args.second_process and args.fast:
        report(rows, [args.sizes[0], "fresh process: build + first fast-path UNet call (cache warm)",
                     f"{second_process(args):.1f} s", "", "", ""])

    print("\n| size | measurement | time | throughput / memory | speed-up vs diffusers | warm-up |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\n| size | output compared with diffusers eager | relative L2 |")
    print("|---|---|---|")
    for name, what, value in diffs:
        print(f"| {name} | {what} | {value:.2e} |")
    save_json()


if __name__ == "__main__":
    main()

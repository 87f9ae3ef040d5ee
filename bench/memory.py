"""Peak GPU memory and time of long videos: videofusion's memory modes beside diffusers', in ONE run.

On CUDA it builds the published 1.7B configs (bench/reference/text-to-video-ms-1.7b.json) with random
weights in fp16 (same shapes, kernels, time and memory as the real checkpoint), shared by both
libraries (diffusers loads our state dicts: the key names are the same), and runs text-to-video at
256x256, 25 DDIM steps, for 16, 64, 128 and 256 frames in each mode:

    resident              ours, everything on the GPU, no memory option (the baseline of the ratios)
    model-offload         ours, enable_model_cpu_offload + enable_vae_slicing
    chunked               ours, resident + enable_frame_chunking(--chunk) + enable_vae_slicing(8)
    streamed-N            ours, enable_streamed_offload(max_blocks=N) + frame chunking + VAE slicing(8)
    sequential            ours, enable_sequential_cpu_offload (streamed, 2 blocks on CUDA) + VAE slicing
    diffusers-resident    diffusers 0.42.1, everything on the GPU
    diffusers-offload     diffusers, enable_model_cpu_offload + vae.enable_slicing
    diffusers-sequential  diffusers, enable_sequential_cpu_offload
    diffusers-group       diffusers, enable_group_offload(block_level, 1 block per group, CUDA stream)

Each (mode, frames) runs once with 1 step (warm-up: cuDNN autotuning, allocator), then once timed
(``torch.cuda.synchronize`` around the call); peak = ``torch.cuda.max_memory_allocated`` over the timed
call. Our UNet runs eager in every mode (the fast path's torch.compile is off), so the ratios compare
memory strategies. ``max |diff|`` is a mode's largest pixel difference (0..1) from our resident run at
the same frame count (same seed). A mode slower than ``--max-run-seconds`` is skipped at larger frame
counts; an out-of-memory run is recorded as such. One JSON line per run goes to stdout (and to
``$OUT/memory.jsonl`` when ``OUT`` is set); a markdown table with ratios comes at the end.

    python bench/memory.py                                  # everything (more than 10 minutes: split it)
    python bench/memory.py --frames 16 64 --modes resident chunked streamed-2 streamed-4 diffusers-offload
    python bench/memory.py --frames 128 256 --modes resident streamed-4 diffusers-offload diffusers-group
    python bench/memory.py --tiny                           # CPU, tiny config: time and peak RSS

``--tiny`` runs on the CPU in float32 with a tiny config: seconds and the process's peak resident
memory during the call (sampled from /proc), for a CI-like machine to check that every mode runs
(streamed offload then runs its schedule on the CPU; offload modes that need an accelerator are left out).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from gpu import byte_tokenizer, configs  # noqa: E402  (bench/gpu.py: the published configs, a byte tokenizer)

TINY_UNET = dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                 attention_head_dim=8, down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                 up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], sample_size=8)
TINY_VAE = dict(block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
                 projection_dim=32, max_position_embeddings=77, vocab_size=1000)
CUDA_MODES = ["resident", "model-offload", "chunked", "streamed-2", "streamed-4", "streamed-8", "sequential",
              "diffusers-resident", "diffusers-offload", "diffusers-sequential", "diffusers-group"]
CPU_MODES = ["resident", "chunked", "streamed-2", "streamed-4", "sequential", "diffusers-resident"]
PROMPT = "Darth Vader surfing a wave"


# ------------------------------------------------------------------------------------------ models
class Parts:
    """The shared ingredients: configs, CPU state dicts of the UNet and VAE, a CPU text encoder."""

    def __init__(self, tiny: bool, device: torch.device, dtype: torch.dtype):
        import videofusion
        from transformers import CLIPTextConfig, CLIPTextModel
        unet_cfg, vae_cfg, text_cfg, self.sched_cfg = configs(tiny=False)
        if tiny:
            unet_cfg, vae_cfg, text_cfg = TINY_UNET, TINY_VAE, TINY_TEXT
        self.unet_cfg, self.vae_cfg = unet_cfg, vae_cfg
        torch.manual_seed(0)
        with device:  # random init where it is fast, then one CPU copy of the values
            unet = videofusion.UNet3DConditionModel(**unet_cfg).to(dtype)
            vae = videofusion.AutoencoderKL(**vae_cfg).to(dtype)
            text = CLIPTextModel(CLIPTextConfig(**text_cfg)).to(dtype).eval()
        self.unet_sd = {k: v.to("cpu") for k, v in unet.state_dict().items()}
        self.vae_sd = {k: v.to("cpu") for k, v in vae.state_dict().items()}
        self.text = text.to("cpu")
        del unet, vae
        self.tokenizer = byte_tokenizer(tempfile.mkdtemp())

    def models(self, unet_cls, vae_cls):
        """Fresh UNet and VAE of these classes holding the shared CPU values (built on meta, no init)."""
        with torch.device("meta"):
            unet, vae = unet_cls(**self.unet_cfg), vae_cls(**self.vae_cfg)
        unet.load_state_dict(self.unet_sd, assign=True)
        vae.load_state_dict(self.vae_sd, assign=True)
        for m in (unet, vae):
            assert not any(t.is_meta for t in (*m.parameters(), *m.buffers())), type(m)
        return unet.eval(), vae.eval()

    def ours(self):
        import videofusion
        unet, vae = self.models(videofusion.UNet3DConditionModel, videofusion.AutoencoderKL)
        scheduler = videofusion.DDIMScheduler.from_config(self.sched_cfg)
        pipe = videofusion.TextToVideoSDPipeline(vae=vae, text_encoder=copy.deepcopy(self.text),
                                                 tokenizer=self.tokenizer, unet=unet, scheduler=scheduler)
        pipe.disable_fast_path()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def diffusers(self):
        import diffusers
        unet, vae = self.models(diffusers.UNet3DConditionModel, diffusers.AutoencoderKL)
        scheduler = diffusers.DDIMScheduler.from_config(self.sched_cfg)
        pipe = diffusers.TextToVideoSDPipeline(vae=vae, text_encoder=copy.deepcopy(self.text),
                                               tokenizer=self.tokenizer, unet=unet, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make(mode: str, parts: Parts, device: torch.device, chunk: int):
    """A pipeline set up for ``mode`` (see the module docstring)."""
    if mode.startswith("diffusers"):
        pipe = parts.diffusers()
        if mode == "diffusers-resident":
            pipe.to(device)
        elif mode == "diffusers-offload":
            pipe.enable_model_cpu_offload(device=device)
            pipe.vae.enable_slicing()
        elif mode == "diffusers-sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        elif mode == "diffusers-group":
            pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                      offload_type="block_level", num_blocks_per_group=1, use_stream=True)
        return pipe
    pipe = parts.ours()
    if mode in ("resident", "chunked"):
        pipe.to(device)
    elif mode == "model-offload":
        pipe.enable_model_cpu_offload(device=device)
    elif mode.startswith("streamed-"):
        pipe.enable_streamed_offload(max_blocks=int(mode.split("-")[1]), device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    if mode == "model-offload" or mode == "sequential":
        pipe.enable_vae_slicing()
    if mode == "chunked" or mode.startswith("streamed-"):
        pipe.enable_frame_chunking(chunk)
        pipe.enable_vae_slicing(8)
    return pipe


# ------------------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Peak resident memory of this process (MiB) while the ``with`` block runs, sampled every 2 ms."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            with open("/proc/self/statm") as f:
                self.peak = max(self.peak, int(f.read().split()[1]) * page / 2**20)
            if self._stop.wait(0.002):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def call(pipe, device: torch.device, frames: int, steps: int, size: int):
    """One call, timed: (seconds, peak GiB allocated on CUDA or peak RSS MiB on the CPU, frames (np))."""
    kw = dict(num_frames=frames, num_inference_steps=steps, height=size, width=size, output_type="np",
              generator=torch.Generator("cpu").manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = pipe(PROMPT, **kw).frames
        torch.cuda.synchronize()
        return time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30, np.asarray(out)
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        out = pipe(PROMPT, **kw).frames
        seconds = time.perf_counter() - t0
    return seconds, rss.peak, np.asarray(out)


def record(row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "memory.jsonl"), "a") as f:
            f.write(line + "\n")


def teardown(pipe, device: torch.device) -> None:
    if hasattr(pipe, "disable_cpu_offload"):
        pipe.disable_cpu_offload()
    elif hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def table(rows: list[dict], modes: list[str], frame_counts: list[int], unit: str) -> str:
    """Markdown: one row per mode, one column per frame count: peak, seconds (x our resident time)."""
    base = {r["frames"]: r["seconds"] for r in rows if r["mode"] == "resident" and "seconds" in r}
    lines = [f"| mode | {' | '.join(f'{f} frames' for f in frame_counts)} | max abs diff |",
             "|---" * (len(frame_counts) + 2) + "|"]
    for mode in modes:
        cells, diffs = [], []
        for f in frame_counts:
            r = next((r for r in rows if r["mode"] == mode and r["frames"] == f), None)
            if r is None or "seconds" not in r:
                cells.append("-" if r is None else r.get("error", "skipped")[:40])
                continue
            ratio = f" ({r['seconds'] / base[f]:.2f}x)" if f in base else ""
            cells.append(f"{r['peak']:.2f} {unit}, {r['seconds']:.1f} s{ratio}")
            if r.get("max_abs_diff") is not None:
                diffs.append(r["max_abs_diff"])
        lines.append(f"| {mode} | {' | '.join(cells)} | {max(diffs):.3g} |" if diffs else
                     f"| {mode} | {' | '.join(cells)} | - |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny config, float32")
    p.add_argument("--frames", type=int, nargs="+", default=None,
                   help="frame counts (default 16 64 128 256; tiny 8 16 32)")
    p.add_argument("--modes", nargs="+", default=None, help="modes to run (default: all for the device)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 25; tiny 3)")
    p.add_argument("--size", type=int, default=None, help="height = width in pixels (default 256; tiny 64)")
    p.add_argument("--chunk", type=int, default=16, help="frames_per_chunk of the chunked modes (default 16)")
    p.add_argument("--max-run-seconds", type=float, default=150.0, help="skip larger frame counts of a slower mode")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)

    if args.tiny:
        device, dtype = torch.device("cpu"), torch.float32
        torch.set_num_threads(min(2, torch.get_num_threads()))
    elif torch.cuda.is_available():
        device, dtype = torch.device("cuda"), torch.float16
    else:
        p.error("no CUDA device: run with --tiny on the CPU")
    modes = args.modes or (CPU_MODES if args.tiny else CUDA_MODES)
    unknown = set(modes) - set(CUDA_MODES) - {f"streamed-{n}" for n in range(1, 65)}
    if unknown:
        p.error(f"--modes: unknown {sorted(unknown)}; choose from {CUDA_MODES} (streamed-N for any N)")
    frame_counts = args.frames or ([8, 16, 32] if args.tiny else [16, 64, 128, 256])
    steps, size = args.steps or (3 if args.tiny else 25), args.size or (64 if args.tiny else 256)
    try:
        import diffusers
        record({"env": True, "torch": torch.__version__, "diffusers": diffusers.__version__,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"})
    except ImportError:
        record({"env": True, "torch": torch.__version__, "diffusers": None})
        modes = [m for m in modes if not m.startswith("diffusers")]
    parts = Parts(args.tiny, device, dtype)
    unit = "MiB RSS" if args.tiny else "GiB"
    rows, too_slow = [], set()
    for frames in frame_counts:
        reference = None
        for mode in modes:
            row = {"mode": mode, "frames": frames, "steps": steps, "size": size}
            if mode in too_slow:
                rows.append({**row, "error": f"skipped (> {args.max_run_seconds:.0f} s before)"})
                continue
            pipe = None
            try:
                pipe = make(mode, parts, device, args.chunk)
                call(pipe, device, frames, 1, size)  # warm-up
                seconds, peak, out = call(pipe, device, frames, steps, size)
                diff = None if reference is None else float(np.abs(out - reference).max())
                if mode == "resident":
                    reference = out
                row.update(seconds=round(seconds, 3), peak=round(peak, 3), max_abs_diff=diff)
                if seconds > args.max_run_seconds:
                    too_slow.add(mode)
            except torch.cuda.OutOfMemoryError:
                row["error"] = "out of memory"
            except Exception as e:  # keep measuring the other modes; the row says what failed
                row["error"] = f"{type(e).__name__}: {e}"[:300]
            if pipe is not None:
                teardown(pipe, device)
            rows.append(row)
            record(row)
    print(f"\n{'CPU (tiny config, float32)' if args.tiny else torch.cuda.get_device_name()}: "
          f"{size}x{size}, {steps} steps; peak {unit}, seconds (x our resident time)\n")
    print(table(rows, modes, frame_counts, unit))
    return 0


if __name__ == "__main__":
    sys.exit(main())

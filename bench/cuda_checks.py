"""Correctness of the GPU-only code paths in one short run: every memory mode and the fast path give the
resident eager pipeline's video, on the built-in demo model (no download, no diffusers).

The streamed offload's CUDA side (pinned copies on a side stream, events, the fence before reusing freed
memory) and the fast path's compiled kernels run only on a GPU; this script is the first benchmark
``bash bench/device.sh`` runs, so a broken path shows up in a minute, not after the benchmarks.
``--cpu`` runs the same checks on the CPU (streamed offload with its NaN placeholders, the
fast path through ``aot_eager``): what CI runs, so the checks themselves keep working.

    python bench/cuda_checks.py          # CUDA, fp16
    python bench/cuda_checks.py --cpu    # CPU, float32

Prints one row per check (max abs difference of the frames in [0, 1] against the resident run, and the
bound) and exits 1 if any check fails.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from videofusion import DiffusionPipeline, LongVideo  # noqa: E402
from videofusion.demo import DEMO_MODEL_PATH  # noqa: E402

PROMPT = "a red circle moving left"


def frames(pipe, num_frames: int = 8, long_video: LongVideo | None = None) -> np.ndarray:
    """Frames (f, h, w, 3) in [0, 1] of a 3-step call, seed 0."""
    out = pipe(PROMPT, num_frames=num_frames, num_inference_steps=3, output_type="np", long_video=long_video,
               generator=torch.Generator("cpu").manual_seed(0)).frames[0]
    return np.asarray(out, dtype=np.float64)


def checks(device: torch.device):
    """(name, set-up, tear-down, bound, call kwargs) for every check; set-up gets the pipeline."""
    cpu = device.type == "cpu"
    small_blocks = 64 * 2**10  # bytes: the demo UNet splits into dozens of blocks

    def fast(p):  # fused QKV, channels-last, compiled (default mode: quick to compile; on the CPU aot_eager)
        p.enable_fast_path(backend="aot_eager") if cpu else p.enable_fast_path(mode="default")

    def streamed(n):
        return lambda p: p.enable_streamed_offload(max_blocks=n, device=device, block_bytes=small_blocks)

    def chunked(p):
        p.enable_frame_chunking(3)
        p.enable_vae_slicing(2)

    def unchunk(p):
        p.disable_frame_chunking()
        p.disable_vae_slicing()

    def offload_off(p):
        p.disable_cpu_offload()
        p.to(device)

    exact = 1e-6 if cpu else 2e-3  # fp16 on CUDA: the same kernels, but bounds allow for other algorithms
    tight = 1e-4 if cpu else 2e-2  # compiled kernels, chunked sums: rounding differs
    return [
        ("fast path (torch.compile default mode)", fast, lambda p: p.disable_fast_path(), tight, {}),
        ("streamed offload, max_blocks=1", streamed(1), offload_off, exact, {}),
        ("streamed offload, max_blocks=2", streamed(2), offload_off, exact, {}),
        ("streamed offload, max_blocks=8", streamed(8), offload_off, exact, {}),
        ("enable_sequential_cpu_offload", lambda p: p.enable_sequential_cpu_offload(device=device), offload_off,
         exact, {}),
        ("enable_model_cpu_offload", lambda p: p.enable_model_cpu_offload(device=device), offload_off, exact, {}),
        ("frame chunking 3 + VAE slicing 2", chunked, unchunk, tight, {}),
        ("streamed-2 + chunking, 20 frames, LongVideo(8, 4)", lambda p: (streamed(2)(p), chunked(p)),
         lambda p: (offload_off(p), unchunk(p)), tight, {"num_frames": 20, "long_video": LongVideo(8, 4)}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU in float32 (CI)")
    parser.add_argument("--only", default=None, metavar="TEXT", help="only the checks whose name contains TEXT")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device; --cpu runs the checks on the CPU")
    device = torch.device("cpu" if args.cpu else "cuda")
    dtype = torch.float32 if args.cpu else torch.float16
    pipe = DiffusionPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    pipe.disable_fast_path()  # the reference: resident, eager
    reference = {}
    failed = 0
    print(f"{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, {dtype}, torch {torch.__version__}")
    print("| check | max abs diff vs resident eager | bound | seconds | result |\n|---|---|---|---|---|")
    selected = [c for c in checks(device) if args.only is None or args.only in c[0]]
    if not selected:
        parser.error(f"--only {args.only!r}: no check matches; checks: {[c[0] for c in checks(device)]}")
    for name, set_up, tear_down, bound, kwargs in selected:
        key = tuple(sorted((k, str(v)) for k, v in kwargs.items()))
        if key not in reference:
            reference[key] = frames(pipe, **kwargs)
        t0 = time.perf_counter()
        try:
            set_up(pipe)
            got = frames(pipe, **kwargs)
            diff = float(np.abs(got - reference[key]).max())
            ok = np.isfinite(got).all() and diff <= bound
            row = f"{diff:.2e}"
        except Exception as error:  # report and go on: one broken mode must not hide the others
            ok, row = False, f"{type(error).__name__}: {error}"[:200]
        finally:
            tear_down(pipe)
            pipe.disable_fast_path()
        failed += not ok
        print(f"| {name} | {row} | {bound:.0e} | {time.perf_counter() - t0:.1f} | {'ok' if ok else 'FAILED'} |",
              flush=True)
    params = [p for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters()]
    if not all(p.device.type == device.type and torch.isfinite(p).all() for p in params):
        print("weights are not all back on the device, finite, after the checks: FAILED")
        failed += 1
    print(f"{failed} of {len(selected)} checks failed" if failed else f"all {len(selected)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Load time and peak memory: videofusion vs diffusers, on the full-size fp16 text-to-video folder (CPU).

    python bench/load.py [FOLDER] [--repeats 3] [--diffusers-path DIR]

FOLDER is a diffusers-format folder written by shared/bench/make_reference_checkpoint.py (the
published 1.7B configs, random weights, variant fp16); without it, one is made in a temp dir
(about 3.5 GB). Every measurement runs in a fresh interpreter: ``import`` time, ``from_pretrained``
time (variant="fp16", torch_dtype=float16), then the time to touch every page of the weights once
(memory-mapped loads defer the reads to first use, so that column keeps the comparison honest), and the
peak RSS (``ru_maxrss``) after the load and after that read. The page cache is warmed first, and
the median of ``--repeats`` runs is shown. ``--diffusers-path`` is prepended to PYTHONPATH of the
diffusers runs only (say, a folder holding ``accelerate``, which diffusers needs for its
low-memory meta-device loading); the table says whether diffusers had accelerate.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPONENTS = ("unet", "vae", "text_encoder", "pipeline")
MAKER = Path(__file__).resolve().parents[2] / "shared" / "bench" / "make_reference_checkpoint.py"


def child(lib: str, component: str, folder: str) -> None:
    """Runs in the fresh interpreter: import, load, read every weight; prints one JSON line."""
    t0 = time.perf_counter()
    import torch
    fp16 = dict(torch_dtype=torch.float16, variant="fp16")
    if lib == "videofusion":
        import videofusion
        from videofusion.models.text import load_text_encoder
        loaders = {
            "unet": lambda: videofusion.UNet3DConditionModel.from_pretrained(folder, subfolder="unet", **fp16),
            "vae": lambda: videofusion.AutoencoderKL.from_pretrained(folder, subfolder="vae", **fp16),
            "text_encoder": lambda: load_text_encoder(folder, **fp16),
            "pipeline": lambda: videofusion.TextToVideoSDPipeline.from_pretrained(folder, **fp16),
        }
    else:
        import diffusers
        import transformers
        loaders = {  # what diffusers' pipeline calls for each component
            "unet": lambda: diffusers.UNet3DConditionModel.from_pretrained(folder, subfolder="unet", **fp16),
            "vae": lambda: diffusers.AutoencoderKL.from_pretrained(folder, subfolder="vae", **fp16),
            "text_encoder": lambda: transformers.CLIPTextModel.from_pretrained(
                folder, subfolder="text_encoder", dtype=torch.float16, variant="fp16"),
            "pipeline": lambda: diffusers.TextToVideoSDPipeline.from_pretrained(folder, **fp16),
        }
    t1 = time.perf_counter()
    loaded = loaders[component]()
    t2 = time.perf_counter()
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    modules = [getattr(loaded, n) for n in ("unet", "vae", "text_encoder")] if component == "pipeline" else [loaded]
    tensors = [t for m in modules for t in [*m.parameters(), *m.buffers()]]
    for t in tensors:  # one element per 4 KiB page: every page of the weights is read in, nothing is copied
        t.detach().reshape(-1)[::max(1, 4096 // t.element_size())].sum()
    t3 = time.perf_counter()
    dtypes = sorted({str(t.dtype) for m in modules for t in m.parameters()})
    try:
        import accelerate  # noqa: F401
        has_accelerate = True
    except ImportError:
        has_accelerate = False
    print(json.dumps(dict(import_s=t1 - t0, load_s=t2 - t1, read_s=t3 - t2, rss_load_mb=rss_load,
                          rss_read_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          params=sum(t.numel() for m in modules for t in m.parameters()), dtypes=dtypes,
                          accelerate=has_accelerate)))


def measure(lib: str, component: str, folder: Path, extra_path: str | None) -> dict:
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore")
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [extra_path if lib == "diffusers" else None, repo,
                                                    env.get("PYTHONPATH")] if p)
    out = subprocess.run([sys.executable, __file__, "--child", lib, component, str(folder)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {component} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="fp16 reference folder (made in a temp dir if omitted)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--components", nargs="+", default=list(COMPONENTS), choices=COMPONENTS)
    parser.add_argument("--diffusers-path", help="folder prepended to PYTHONPATH of the diffusers runs only")
    parser.add_argument("--child", nargs=3, metavar=("LIB", "COMPONENT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.repeats < 1:
        parser.error("--repeats: must be >= 1")

    if args.folder:
        folder = Path(args.folder)
        if not (folder / "model_index.json").is_file():
            parser.error(f"folder: {folder} has no model_index.json")
    else:
        folder = Path(tempfile.mkdtemp(prefix="vf-load-bench-")) / "t2v-fp16"
        print(f"making the reference folder in {folder} with {MAKER} ...", flush=True)
        subprocess.run([sys.executable, str(MAKER), str(folder)], check=True)
    warm_page_cache(folder)

    rows = {}
    for component in args.components:
        runs = {"videofusion": [], "diffusers": []}
        for _ in range(args.repeats):  # interleaved, so a busy machine slows both alike
            for lib, lib_runs in runs.items():
                r = measure(lib, component, folder, args.diffusers_path)
                r["ready_s"] = r["import_s"] + r["load_s"]
                lib_runs.append(r)
                print(json.dumps({"component": component, "lib": lib, **r}), flush=True)
        for lib, lib_runs in runs.items():
            rows[component, lib] = {**lib_runs[0], **{k: statistics.median(r[k] for r in lib_runs) for k in (
                "import_s", "load_s", "ready_s", "read_s", "rss_load_mb", "rss_read_mb")}}

    print(f"\nfolder {folder}, variant fp16, torch_dtype float16, median of {args.repeats} fresh interpreters, "
          f"CPU; diffusers with accelerate: {rows[args.components[0], 'diffusers']['accelerate']}\n")
    print("| component | library | params | import s | from_pretrained s | import + from_pretrained s | "
          "read all weights s | peak RSS after load MB | peak RSS after read MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (component, lib), r in rows.items():
        print(f"| {component} | {lib} | {r['params'] / 1e6:.0f}M | {r['import_s']:.2f} | {r['load_s']:.3f} | "
              f"{r['ready_s']:.2f} | {r['read_s']:.2f} | {r['rss_load_mb']:.0f} | {r['rss_read_mb']:.0f} |")
    print("\nratios videofusion / diffusers (below 1 is better):\n")
    print("| component | from_pretrained | import + from_pretrained | read all weights | "
          "peak RSS after load | peak RSS after read |")
    print("|---|---|---|---|---|---|")
    for component in args.components:
        ours, theirs = rows[component, "videofusion"], rows[component, "diffusers"]
        ratio = lambda k: f"{ours[k] / theirs[k]:.2f}"
        print(f"| {component} | {ratio('load_s')} | {ratio('ready_s')} | {ratio('read_s')} | "
              f"{ratio('rss_load_mb')} | {ratio('rss_read_mb')} |")


if __name__ == "__main__":
    main()

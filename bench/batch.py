"""Throughput of `videofusion batch`: items per minute with 1 and N Ray workers on this machine.

    python bench/batch.py [--items 16] [--workers 1 2] [--threads-per-worker 1] [--model FOLDER]
                          [--num-frames 16] [--steps 25] [--device cpu] [--num-gpus-per-worker 0]

Each configuration runs the same items (the built-in demo model's settings by default: 16 frames of
64x64, 25 steps) into a fresh temp folder on a fresh local Ray with ``workers x threads`` CPUs. Columns:
``wall`` counts everything (Ray start, model loads, generation, writing); ``steady`` is the rate once
every worker has delivered its first item (arrival times of the manifest lines, polled every 50 ms), the
number that grows with the worker count; ``item s`` is the mean seconds one item took on its worker.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from videofusion.apps.batch import BatchOptions, run_batch  # noqa: E402
from videofusion.apps.batch_output import MANIFEST  # noqa: E402
from videofusion.demo import DEMO_MODEL_PATH  # noqa: E402


def arrivals(manifest: Path, stop: threading.Event, out: list[float]) -> None:
    """Append the time each new manifest line appears (50 ms resolution) until ``stop`` is set."""
    seen = 0
    while not stop.is_set():
        if manifest.is_file():
            n = len(manifest.read_bytes().splitlines())
            out.extend([time.perf_counter()] * (n - seen))
            seen = max(seen, n)
        time.sleep(0.05)


def measure(prompts: Path, workers: int, threads: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        times: list[float] = []
        stop = threading.Event()
        watcher = threading.Thread(target=arrivals, args=(out / MANIFEST, stop, times), daemon=True)
        options = BatchOptions(model=args.model, workers=workers, num_cpus_per_worker=threads, threads=threads,
                               device=args.device, num_gpus_per_worker=args.num_gpus_per_worker)
        watcher.start()
        t0 = time.perf_counter()
        summary = run_batch(prompts, out, options, progress=False)
        wall = time.perf_counter() - t0
        time.sleep(0.1)
        stop.set()
        watcher.join()
        records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert summary["generated"] == args.items, summary
    k = min(workers, len(times)) - 1  # index of the arrival after which every worker is warm
    steady = (len(times) - 1 - k) / (times[-1] - times[k]) * 60 if len(times) - 1 > k else float("nan")
    return {"workers": workers, "threads": threads, "wall_s": wall, "wall_per_min": args.items / wall * 60,
            "steady_per_min": steady, "item_s": statistics.mean(r["seconds"] for r in records),
            "worker_names": len({r["worker"] for r in records})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads-per-worker", type=int, nargs="+", default=[1])
    parser.add_argument("--model", default=str(DEMO_MODEL_PATH))
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-gpus-per-worker", type=float, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        colours, shapes, moves = ("red", "green", "blue", "yellow"), ("circle", "square"), ("left", "right")
        prompts.write_text("".join(json.dumps({
            "prompt": f"a {colours[i % 4]} {shapes[i // 4 % 2]} moving {moves[i // 8 % 2]}", "seed": i,
            "num_frames": args.num_frames, "num_inference_steps": args.steps}) + "\n" for i in range(args.items)))
        rows = [measure(prompts, w, t, args) for t in args.threads_per_worker for w in args.workers]
    print(f"\n{args.items} items, {args.num_frames} frames, {args.steps} steps, model {args.model}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'threads':>7} {'wall s':>7} {'wall/min':>9} {'steady/min':>10} {'x 1 worker':>10} "
          f"{'item s':>7}")
    base = {r["threads"]: r["steady_per_min"] for r in rows if r["workers"] == min(args.workers)}
    for r in rows:
        ratio = r["steady_per_min"] / base[r["threads"]]
        print(f"{r['workers']:>7} {r['threads']:>7} {r['wall_s']:>7.1f} {r['wall_per_min']:>9.1f} "
              f"{r['steady_per_min']:>10.1f} {ratio:>10.2f} {r['item_s']:>7.2f}")


if __name__ == "__main__":
    main()

"""bench/long_video_demo.py: its video list is eval-demo's, and its motion per quarter reads rendered clips."""
import sys
from pathlib import Path

import numpy as np

from videofusion.demo.shapes import ShapeSpec, render_clip

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import long_video_demo as bench  # noqa: E402


def test_jobs_are_eval_demos_videos():
    jobs = bench.jobs(seeds=1, heldout_seeds=1, max_combos=16)
    assert len(jobs) == 23 and [j[0] for j in jobs].count("heldout") == 7
    assert [seed for split, _, seed in jobs if split == "seen"] == list(range(16))
    assert all(p.startswith("a ") and " moving " in p for _, p, _ in jobs)


def test_quarter_travel_of_rendered_clips():
    left = render_clip(ShapeSpec("red", "circle", "left", speed="slow", start=(0.5, 0.5)), num_frames=32)
    travel = bench.quarter_travel(left, "left")
    assert len(travel) == 4 and all(0.05 < t < 0.2 for t in travel)  # 1 pixel a frame: 7 of 64 per quarter
    assert bench.quarter_travel(left, "right")[0] == -travel[0]
    still = np.repeat(left[:1], 32, axis=0)
    assert all(abs(t) < 0.01 for t in bench.quarter_travel(still, "down"))


def test_parser_and_tables():
    args = bench.build_parser().parse_args(["eval", "--frames", "64", "256", "--methods", "plain", "fifo"])
    assert args.frames == [64, 256] and args.methods == ["plain", "fifo"] and args.threads == 1
    rows = [{"mode": "fifo", "frames": f, "seconds": 2.0 * f, "seconds_per_frame": 2.0, "cpu_seconds": f + 10.0,
             "cpu_seconds_per_frame": 1.0, "peak_rss_mib": 400.0 + f / 1024, "rss_after_load_mib": 300.0}
            for f in (64, 256)]
    table = bench.memory_tables(rows)
    assert "| fifo | 256 | 400 | 100 |" in table and "CPU seconds = 10.0 + 1.000 x frames" in table

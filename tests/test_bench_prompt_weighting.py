"""bench/prompt_weighting_demo.py keeps working: a short run on the demo model prints the weight-1 check and its
table (one row per pair, weighted colour and weight, shares in [0, 1]), writes its JSON, and bad options are
refused (exit code 2) before any model loads."""
import json

import numpy as np
import pytest
from helpers import load_bench

import videofusion



@pytest.fixture(scope="module")
def bench():
    return load_bench("prompt_weighting_demo")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_short_run_prints_the_check_and_the_table_and_writes_json(bench, tmp_path, capsys):
    out_json = tmp_path / "weighting.json"
    argv = ["--seeds", "2", "--pairs", "red/blue", "--weights", "2", "--frames", "4", "--steps", "2",
            "--batch-size", "2", "--json", str(out_json)]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()

    check = [line for line in lines if line.startswith("weight 1 vs plain prompt")]
    assert len(check) == 1 and "2/2 videos bit for bit identical: identical" in check[0], check

    start = lines.index(bench.HEADER)
    assert lines[start + 1].startswith("|---")
    body = lines[start + 2:]
    rows = [cells(line) for line in body if line.startswith("|")]
    assert len(rows) == len(body) == 4  # weighted red at 1 and 2, weighted blue at 1 and 2; nothing after
    assert [(r[0], r[1], float(r[2])) for r in rows] == [("red/blue", "red", 1.0), ("red/blue", "red", 2.0),
                                                         ("red/blue", "blue", 1.0), ("red/blue", "blue", 2.0)]
    for r in rows:
        assert len(r) == 11 and int(r[3]) == 2
        shares = [float(v) for v in r[4:7]]
        assert all(0 <= v <= 1 for v in shares) and sum(shares) == pytest.approx(1, abs=0.011), r
        assert r[7] == "n/a" or np.isfinite(float(r[7]))
        assert float(r[9]) > 0
    assert rows[0][4:] == rows[2][4:]  # weight 1: one prompt, the same videos in both blocks
    assert float(rows[0][8]) == 0.0 and rows[1][8] != "0.00"  # the embedding changes only when weighted

    report = json.loads(out_json.read_text())
    assert report["settings"]["weights"] == [1.0, 2.0]
    assert report["weight_1_check"] == [{"pair": "red/blue", "plain": "a red blue circle moving left",
                                         "weighted": "a (red:1) blue circle moving left", "identical": 2,
                                         "videos": 2, "embedding_change": 0.0}]
    assert [(r["weighted"], r["weight"]) for r in report["rows"]] == [("red", 1.0), ("red", 2.0), ("blue", 1.0),
                                                                       ("blue", 2.0)]
    assert report["rows"][3]["prompt"] == "a red (blue:2) circle moving left"
    assert len(report["videos"]) == 3 * 2  # three prompts (weight 1, red 2, blue 2), two seeds each
    for r in report["rows"]:
        assert r["share_a"] + r["share_b"] + r["other"] == pytest.approx(1)


def test_reading_the_colour_and_its_hue_position(bench):
    from videofusion.demo.shapes import ShapeSpec, render_clip

    table = bench.hues()
    for colour in ("red", "blue", "magenta"):
        clip = render_clip(ShapeSpec(colour=colour, shape="circle", direction="left"), num_frames=8)
        r = bench.read(clip, "red", "blue", table)
        assert r["colour"] == colour
        assert r["hue_position"] == pytest.approx({"red": 0, "blue": 1, "magenta": 60 / (360 - 230.27)}[colour],
                                                  abs=0.05)
    assert bench.read(np.full((4, 16, 16, 3), np.nan, np.float32), "red", "blue", table)["colour"] == "nan"
    assert bench.read(np.full((4, 16, 16, 3), 0.5, np.float32), "red", "blue", table)["colour"] == "blank"
    assert bench.weighted_prompt("cyan", "yellow", "yellow", 1.25, "square", "up") == \
        "a cyan (yellow:1.25) square moving up"


@pytest.mark.parametrize("argv", [["--weights", "0"], ["--weights", "-1"], ["--weights", "nan"],
                                  ["--weights", "inf"], ["--weights", "2", "2"], ["--seeds", "0"],
                                  ["--pairs", "red"], ["--pairs", "red/red"], ["--pairs", "red/purple"],
                                  ["--pairs", "red/cyan"], ["--pairs", "red/blue", "red/blue"],
                                  ["--frames", "1"], ["--steps", "0"], ["--batch-size", "0"], ["--threads", "0"],
                                  ["--guidance-scale", "-1"], ["--shape", "hexagon"], ["--direction", "around"],
                                  ["--json", "/no/such/folder/out.json"]])
def test_bad_options_exit_2_before_any_model_loads(bench, monkeypatch, capsys, argv):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(videofusion.TextToVideoSDPipeline, "from_pretrained", no_loading)
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error: --" in capsys.readouterr().err

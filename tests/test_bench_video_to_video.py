"""bench/video_to_video_demo.py keeps working: a short run on the demo model prints its tables with shares in
[0, 1], writes its JSON, and bad options are refused (exit code 2) before any model loads."""
import json

import pytest
from helpers import load_bench

import videofusion

HEADER = "| strength | videos | target colour | source colour kept | direction kept | seconds |"


@pytest.fixture(scope="module")
def bench():
    return load_bench("video_to_video_demo")


def cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_short_run_prints_the_table_and_writes_json(bench, tmp_path, capsys):
    out_json = tmp_path / "v2v.json"
    argv = ["--seeds", "2", "--strengths", "0.5", "1.0", "--steps", "2", "--batch-size", "2", "--json", str(out_json)]
    assert bench.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()

    start = lines.index(HEADER)
    rows = [cells(line) for line in lines[start + 2:start + 4]]
    assert lines[start + 1].startswith("|---")
    assert start + 4 == len(lines) or not lines[start + 4].startswith("|")  # exactly one row per strength
    assert [float(r[0]) for r in rows] == [0.5, 1.0]
    for r in rows:
        assert len(r) == 6 and int(r[1]) == 2
        assert all(0 <= float(v) <= 1 for v in r[2:5]), r
        assert float(r[5]) > 0
    inputs = next(line for line in lines if line.startswith("inputs as generated:"))
    assert "2 videos" in inputs

    pair_header = next(i for i, line in enumerate(lines) if line.startswith("| strength | red->blue left"))
    assert cells(lines[pair_header]) == ["strength", "red->blue left", "green->yellow right"]
    for line in lines[pair_header + 2:pair_header + 4]:
        for cell in cells(line)[1:]:  # "0.50 / 0.00 / 1.00" then maybe ", magenta 1" (other colours read)
            assert all(0 <= float(v) <= 1 for v in cell.split(",")[0].split(" / ")), cell

    report = json.loads(out_json.read_text())
    assert [r["strength"] for r in report["strengths"]] == [0.5, 1.0]
    assert report["inputs"]["videos"] == 2 and len(report["videos"]) == 2
    for r in report["strengths"]:
        assert all(0 <= r[k] <= 1 for k in ("target_colour", "source_colour_kept", "direction_kept"))
        assert set(r["pairs"]) == {"red->blue left", "green->yellow right"}
    assert set(report["videos"][0]["outputs"]) == {"0.5", "1"}


@pytest.mark.parametrize("argv", [["--strengths", "0"], ["--strengths", "0.5", "1.5"], ["--strengths", "-0.3"],
                                  ["--strengths", "nan"], ["--seeds", "0"], ["--seeds", "-2"],
                                  ["--strengths", "0.1", "--steps", "5"], ["--steps", "0"], ["--batch-size", "0"],
                                  ["--threads", "0"], ["--shape", "hexagon"]])
def test_bad_options_exit_2_before_any_model_loads(bench, monkeypatch, capsys, argv):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(videofusion.VideoToVideoSDPipeline, "from_pretrained", no_loading)
    monkeypatch.setattr(videofusion.TextToVideoSDPipeline, "from_pretrained", no_loading)
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    assert "error: --" in capsys.readouterr().err

"""bench/first_video.py: its table and import report, and one real run of the command (our CLIP), whose file
is a valid video and whose imports leave out transformers, diffusers, gradio and ray."""
from __future__ import annotations


import pytest
from helpers import load_bench



@pytest.fixture(scope="module")
def bench():
    return load_bench("first_video")


def test_table_medians_and_ratio(bench):
    runs = [bench.Run("demo", w, 0.3, 1.7, w - 0.1) for w in (2.4, 2.6, 9.0)]
    runs += [bench.Run("transformers", w, 0.5, 1.7, w) for w in (4.9, 5.2, 5.0)]
    lines = bench.table(runs).splitlines()
    assert lines[2] == "| demo | 3 | 2.60 | 2.50 | 0.3 | 1.7 | 0.60 | 1.00x |"
    assert lines[3] == "| transformers | 3 | 5.00 | 5.00 | 0.5 | 1.7 | 2.80 | 1.92x |"
    text = "import time:       120 |        120 |   json\nimport time:   900000 |     950000 | torch\n" \
           "import time:    50000 |      50000 |     torch._C\n"
    assert bench.import_costs(text) == pytest.approx({"json": 0.00012, "torch": 0.95})


def test_one_run_writes_a_video_without_heavy_imports(bench, tmp_path):
    run = bench.run_once("demo", tmp_path / "out.mp4", extra=["--steps", "2"], importtime=True)  # quicker
    assert bench.check_video(tmp_path / "out.mp4") == (16, 64, 64)
    assert run.wall_s > run.load_s + run.gen_s > 0 and run.cpu_s > 0 and run.imports["torch"] > 0
    assert not set(bench.HEAVY) & set(run.imports), sorted(run.imports)
    assert "heavy packages imported: none" in bench.import_table(run)
    with pytest.raises(ValueError, match="variant: must be one of"):
        bench.run_once("tf", tmp_path / "x.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="not a readable video"):
        bench.check_video(tmp_path / "bad.mp4")


def test_the_default_is_the_4_step_model_and_builtin_names_resolve(bench, tmp_path, monkeypatch):
    import subprocess

    import numpy as np

    from videofusion import load_video
    from videofusion.apps.common import CLIError, resolve_model
    from videofusion.demo import DEMO_FAST_MODEL_PATH, DEMO_MODEL_PATH
    from videofusion.demo.evaluation import score_clip
    assert resolve_model(None) == resolve_model("demo-4step") == str(DEMO_FAST_MODEL_PATH)
    assert resolve_model("demo") == str(DEMO_MODEL_PATH) and resolve_model("org/model") == "org/model"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert resolve_model("demo") == "demo"  # a local folder of that name wins
    monkeypatch.setattr("videofusion.apps.common.BUILTIN_MODELS", {"demo-4step": tmp_path / "missing"})
    with pytest.raises(CLIError, match="--model: the built-in 'demo-4step' is not installed"):
        resolve_model(None)
    run = bench.run_once("default", tmp_path / "default.mp4")
    frames = np.stack([np.asarray(f) for f in load_video(str(tmp_path / "default.mp4"))])
    read = score_clip(frames, bench.PROMPT)["predicted"]
    assert (read["colour"], read["direction"]) == ("red", "left") and run.gen_s > 0
    result = subprocess.run(bench.command(tmp_path / "x.mp4", ["--fast"]), capture_output=True, text=True)
    assert result.returncode == 2 and "--fast" in result.stderr and not (tmp_path / "x.mp4").exists()

"""The `videofusion` command: generate writes a playable video; bad input is one line and exit code 2."""
import subprocess
import sys

import av
import pytest

from videofusion.apps.main import main


def test_generate_writes_an_h264_mp4_and_prints_the_path(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = main(["generate", "a red circle", "--model", tiny_pipeline_dir, "--steps", "2", "--num-frames", "4",
                 "--seed", "1", "--output", str(out), "--scheduler", "dpm++2m", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "seed 1" in printed
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert sum(1 for _ in container.decode(stream)) == 4


def test_generate_gif_and_same_seed_same_video(tiny_pipeline_dir, tmp_path):
    from videofusion.io.video import load_video
    args = ["generate", "a blue square", "--model", tiny_pipeline_dir, "--steps", "2", "--num-frames", "3",
            "--seed", "7", "--quiet", "--fps", "4"]
    assert main(args + ["--output", str(tmp_path / "a.gif")]) == 0
    assert main(args + ["--output", str(tmp_path / "b.gif")]) == 0
    a, b = load_video(str(tmp_path / "a.gif")), load_video(str(tmp_path / "b.gif"))
    assert len(a) == 3 and [x.tobytes() for x in a] == [x.tobytes() for x in b]


@pytest.mark.parametrize("extra,word", [
    (["--height", "13"], "--height"),
    (["--num-frames", "0"], "--num-frames"),
    (["--output", "x.avi"], "--output"),
    (["--fps", "0"], "--fps"),
    (["--device", "cuda:3"], "--device"),
])
def test_bad_input_is_one_line_and_exit_code_2(tiny_pipeline_dir, tmp_path, capsys, extra, word, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(["generate", "a red circle", "--model", tiny_pipeline_dir, "--steps", "1", "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.mp4"))


def test_missing_model_folder_is_exit_code_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "videofusion.apps.main", "generate", "x", "--model",
                             str(tmp_path / "nothing-here")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "nothing-here" in result.stderr and "Traceback" not in result.stderr


def test_unknown_scheduler_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "x", "--scheduler", "warp-drive"])
    assert exit_info.value.code == 2


def test_generate_with_lora_and_prompt_weighting(tiny_pipeline_dir, tmp_path, capsys):
    """--lora PATH[:SCALE] (repeatable) changes the video, scale 0 is the model alone; --prompt-weighting reads
    the brackets; a file that is no LoRA is one line naming --lora, before any model loads."""
    from lora_oracle import UNET_TARGETS, add_peft_adapter, diffusers_unet, save_diffusers_lora
    from videofusion.io.video import load_video
    sd, config = add_peft_adapter(diffusers_unet(tiny_pipeline_dir), "x", UNET_TARGETS, seed=1)
    lora = save_diffusers_lora(str(tmp_path / "style"), sd, config)
    args = ["generate", "a (red:1.3) circle", "--model", tiny_pipeline_dir, "--steps", "2", "--num-frames", "2",
            "--seed", "1", "--quiet", "--fps", "4"]
    videos = {}
    for name, extra in [("plain", []), ("zero", ["--lora", f"{lora}:0", "--lora", str(tmp_path / "style")
                                                 + ":0.0"]), ("lora", ["--lora", f"{lora}:0.7"]),
                        ("weighted", ["--prompt-weighting"])]:
        assert main(args + extra + ["--output", str(tmp_path / f"{name}.gif")]) == 0
        videos[name] = b"".join(x.tobytes() for x in load_video(str(tmp_path / f"{name}.gif")))
    assert videos["zero"] == videos["plain"] != videos["lora"] and videos["weighted"] != videos["plain"]
    capsys.readouterr()
    (tmp_path / "notes.safetensors").write_bytes(b"not weights")
    result = subprocess.run([sys.executable, "-m", "videofusion.apps.main", *args, "--lora",
                             str(tmp_path / "notes.safetensors"), "--output", str(tmp_path / "x.mp4")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("videofusion generate: error: --lora: ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

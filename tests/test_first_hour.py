"""What a new user meets in the first hour, each run as the real `videofusion` command in a subprocess.

The commands start together (a few at a time) in the module fixture; each test then reads its own
command's exit code and output."""
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from videofusion.demo import DEMO_MODEL_PATH
from videofusion.runtime.devices import default_threads
from videofusion.version import __version__


DEMO_GIF = Path(__file__).resolve().parents[1] / "docs" / "demo.gif"  # the demo's "a red circle moving left"


class Hub:
    """A Hub endpoint that accepts connections and closes them at once, counting them: no Hub here."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(32)
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def commands(tiny: str, busy_port: int) -> dict[str, list[str]]:
    """name -> the arguments after `videofusion` (each runs in a folder of its own)."""
    gen = ["generate", "a red circle", "--model", tiny, "--steps", "1", "--num-frames", "2", "-q"]
    return {
        "train-missing-model": ["train", "cfg.toml"],
        "height": [*gen, "--height", "13"],
        "nan-guidance": [*gen, "--guidance-scale", "nan"],
        "empty-prompt": ["generate", "   ", "--model", tiny],
        "gif-fps-before-model": ["generate", "x", "--model", "/no/such/model", "--fps", "60", "-o", "a.gif"],
        "unknown-words": ["generate", "a cat playing piano", "--steps", "1", "-o", "cat.mp4"],
        "name-1": [*gen],
        "name-2": [*gen],
        "no-overwrite": [*gen, "--seed", "5", "-o", "fixed.mp4"],  # fixed.mp4 is there already
        "version": ["--version"],
        "bad-choice": ["generate", "x", "--scheduler", "warp-drive"],
        "web-busy-port": ["web", "--port", str(busy_port), "--model", "/no/such/model"],
        "two-stage": ["generate", "a red circle moving left", "--steps", "2", "--seed", "1", "-o", "two.mp4",
                      "--refine-model", str(DEMO_MODEL_PATH), "--refine-size", "128x128", "--refine-strength", "0.5"],
        "from-video": ["generate", "a blue circle moving left", "--init-video", str(DEMO_GIF), "--strength", "0.7",
                       "--steps", "3", "-o", "blue.mp4"],
        "strength-alone": [*gen, "--strength", "0.5"],
        "bad-refine-size": [*gen, "--refine-model", tiny, "--refine-size", "128x"],
        "missing-init-video": ["generate", "x", "--model", tiny, "--init-video", "nothere.mp4"],
    }


@pytest.fixture(scope="module")
def runs(tiny_pipeline_dir, tmp_path_factory):
    hub = Hub()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub"))}
    env.pop("HF_HUB_OFFLINE", None)
    results, pending = {}, list(commands(tiny_pipeline_dir, busy.getsockname()[1]).items())
    running: dict[str, tuple[subprocess.Popen, Path]] = {}
    while pending or running:
        while pending and len(running) < 4:
            name, args = pending.pop(0)
            cwd = tmp_path_factory.mktemp(name)
            if name == "train-missing-model":
                (cwd / "cfg.toml").write_text('model = "out/demo-init"\noutput_dir = "out/x"\ndata = { shapes = 4 }\n')
            if name == "no-overwrite":
                (cwd / "fixed.mp4").write_bytes(b"keep")
            if name == "name-2":
                cwd = running["name-1"][1] if "name-1" in running else results["name-1"]["cwd"]
            proc = subprocess.Popen([sys.executable, "-m", "videofusion.apps.main", *args], cwd=cwd, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            running[name] = (proc, cwd)
            if name == "name-1":
                proc.wait(timeout=120)  # name-2 runs in the same folder after it
        for name, (proc, cwd) in list(running.items()):
            if proc.poll() is not None:
                out, err = proc.communicate()
                results[name] = {"rc": proc.returncode, "out": out, "err": err, "cwd": cwd}
                del running[name]
        time.sleep(0.05)
    busy.close()
    results["hub-connections"] = hub.connections
    return results


def one_error_line(run: dict) -> str:
    lines = run["err"].strip().splitlines()
    assert run["rc"] == 2 and len(lines) == 1 and "Traceback" not in run["err"], run
    return lines[0]


def test_a_missing_model_folder_says_what_makes_it_and_asks_the_hub_once(runs):
    line = one_error_line(runs["train-missing-model"])
    assert "no folder 'out/demo-init' here" in line and "videofusion init-demo" in line
    assert "the Hub could not be reached" in line
    assert runs["hub-connections"] == 1  # one probe; the rest of the commands never ask the Hub


@pytest.mark.parametrize("name,flag,value", [("height", "--height", "13"), ("nan-guidance", "--guidance-scale", "nan"),
                                             ("empty-prompt", "PROMPT", "'   '")])
def test_errors_name_the_option_typed_and_the_value_given(runs, name, flag, value):
    line = one_error_line(runs[name])
    assert line.startswith(f"videofusion generate: error: {flag}: ") and line.endswith(value), line


def test_the_output_is_checked_before_the_model(runs):
    line = one_error_line(runs["gif-fps-before-model"])
    assert "--fps" in line and "at most 50 for a GIF" in line and "model" not in line


def test_words_the_demo_model_does_not_know_get_one_note(runs):
    run = runs["unknown-words"]
    assert run["rc"] == 0 and (run["cwd"] / "cat.mp4").is_file()
    notes = [line for line in run["err"].splitlines() if "note:" in line]
    assert len(notes) == 1 and "'cat', 'playing', 'piano'" in notes[0] and "colours red, green" in notes[0]


def test_default_names_carry_the_seed_and_nothing_is_overwritten_unasked(runs):
    first, second = runs["name-1"], runs["name-2"]
    assert first["rc"] == 0 and second["rc"] == 0
    seeds = [run["out"].split("seed ")[1].split(";")[0] for run in (first, second)]  # two random seeds
    assert sorted(p.name for p in first["cwd"].glob("*.mp4")) == sorted(f"a-red-circle-seed{s}.mp4" for s in seeds)
    line = one_error_line(runs["no-overwrite"])
    assert "--output" in line and "--overwrite" in line
    assert (runs["no-overwrite"]["cwd"] / "fixed.mp4").read_bytes() == b"keep"


def test_generate_uses_the_shared_thread_default_and_says_so(runs):
    threads = default_threads()
    assert f"on cpu, {threads} thread{'s' * (threads > 1)}," in runs["name-1"]["out"]


def test_version_and_one_line_choice_errors(runs):
    assert runs["version"]["rc"] == 0 and runs["version"]["out"].strip() == f"videofusion {__version__}"
    line = one_error_line(runs["bad-choice"])
    assert "warp-drive" in line and "usage:" not in runs["bad-choice"]["err"]


def test_web_on_a_busy_port_is_one_line_before_loading(runs):
    line = one_error_line(runs["web-busy-port"])
    assert line.startswith("videofusion web: error: --port: cannot listen on 127.0.0.1:") and "in use" in line


def test_every_front_end_has_the_same_runtime_options():
    from videofusion.apps.main import build_parser
    parser = build_parser()
    for command in (["generate", "x"], ["web"], ["batch", "p.jsonl", "-o", "d"], ["train", "c.toml"],
                    ["eval-demo"]):
        args = parser.parse_args(command)
        assert args.threads is None, command  # None: runtime.devices.default_threads()
    for command in (["generate", "x"], ["web"], ["batch", "p.jsonl", "-o", "d"]):
        args = parser.parse_args(command)
        assert (args.device, args.dtype) == ("auto", "auto"), command


def test_batch_workers_default_to_the_thread_count_of_generate(tiny_pipeline_dir):
    """So the same prompt and seed give the same video from both on one machine (results differ in the last
    bits between thread counts); tests/test_batch.py checks what the workers record."""
    from videofusion.apps.batch import BatchOptions
    assert BatchOptions(model=tiny_pipeline_dir).num_cpus_per_worker == default_threads()


def test_json_errors_report_the_column_on_their_own_line(tmp_path):
    from videofusion.apps.batch_items import PIPELINE_DEFAULTS, Defaults, read_items
    line = '{"prompt": "a blue square moving up", "seed": 3, "num_inference_steps": 2'
    (tmp_path / "p.jsonl").write_text(line + "\n")
    _, errors = read_items(tmp_path / "p.jsonl", Defaults(PIPELINE_DEFAULTS, PIPELINE_DEFAULTS))
    assert errors[0]["error"] == f"not valid JSON: Expecting ',' delimiter (column {len(line) + 1})"


def test_the_float16_on_cpu_warning_points_at_the_callers_line(tiny_pipeline_dir):
    import torch

    from videofusion import TextToVideoSDPipeline
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="float16 on the CPU") as caught:
        pipe("a red circle", num_frames=1, num_inference_steps=1, output_type="latent")
    assert [w.filename for w in caught if "float16" in str(w.message)] == [__file__]


def test_a_prompt_longer_than_the_tokenizer_says_what_was_cut(tiny_pipeline_dir, caplog):
    import torch

    from videofusion import TextToVideoSDPipeline
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    limit = pipe.tokenizer.model_max_length
    with caplog.at_level("WARNING", logger="videofusion"):
        pipe("a " * (limit - 2) + "zebra", num_frames=1, num_inference_steps=1, output_type="latent")
    assert f"up to {limit} tokens" in caplog.text and "zebra" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="videofusion"):
        pipe("a red circle", num_frames=1, num_inference_steps=1, output_type="latent")
    assert "truncated" not in caplog.text


def test_two_stages_and_a_video_to_start_from(runs):
    import av
    for name, size in (("two-stage", 128), ("from-video", 64)):
        run = runs[name]
        assert run["rc"] == 0, run
        with av.open(str(run["cwd"] / ("two.mp4" if name == "two-stage" else "blue.mp4"))) as container:
            stream = container.streams.video[0]
            assert (stream.width, stream.height, stream.codec_context.name) == (size, size, "h264")
            assert sum(1 for _ in container.decode(stream)) == 16
    assert "refining" in runs["two-stage"]["err"] and "denoising" in runs["two-stage"]["err"]  # a bar per stage
    assert "--strength: only with --init-video" in one_error_line(runs["strength-alone"])
    assert "--refine-size" in one_error_line(runs["bad-refine-size"])
    assert "nothere.mp4" in one_error_line(runs["missing-init-video"])

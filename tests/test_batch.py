"""`videofusion batch`: JSONL items -> DIR/<id>.mp4 + manifest on Ray; deterministic, resumable, robust to kills.

The Ray tests share one local Ray cluster (2 CPUs) per module; a tiny random model, 2 frames, few steps.
"""
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from videofusion.apps.batch import BatchOptions, BatchWorker, run_batch, run_spec
from videofusion.apps.batch_output import ERRORS, MANIFEST, OutputFolder, item_spec, plan
from videofusion.apps.batch_items import (PIPELINE_DEFAULTS, VIDEO_TO_VIDEO_PIPELINE_DEFAULTS, Defaults, derive_seed,
                                          line_id, parse_item, read_items)
from videofusion.apps.main import main
from videofusion.runtime.devices import default_threads

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'videofusion[distributed]')")
FAST = {"num_frames": 2, "num_inference_steps": 2}


def defaults(changes: dict | None = None) -> Defaults:
    return Defaults({**PIPELINE_DEFAULTS, **(changes or {})}, {**VIDEO_TO_VIDEO_PIPELINE_DEFAULTS, **(changes or {})})


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def decode(path: Path) -> np.ndarray:
    """All frames of a video file, (num_frames, height, width, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


def manifest_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()]


# ----------------------------------------------------------------------------- parsing (no Ray)


def test_read_items_resolves_ids_seeds_and_settings(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a red circle"},
        "",
        {"prompt": "a blue square", "id": "blue", "seed": 5, "num_frames": 4, "negative_prompt": "blur"},
        {"prompt": "a cyan line", "id": 7, "height": 64, "noise": "decomposed", "noise_ratio": 0.2},
        "# a comment",
    ])
    items, errors = read_items(path, defaults({"num_inference_steps": 3}))
    assert errors == []
    first, blue, cyan = items
    assert (first.line, first.id, blue.id, cyan.id) == (1, line_id(1), "blue", "7")
    assert first.seed == derive_seed(line_id(1)) == derive_seed("line-000001") and 0 <= first.seed < 2**31
    assert derive_seed("a") != derive_seed("b") and blue.seed == 5
    assert blue.settings == {**PIPELINE_DEFAULTS, "num_inference_steps": 3, "num_frames": 4, "negative_prompt": "blur"}
    assert (cyan.settings["height"], cyan.settings["noise"], cyan.settings["noise_ratio"]) == (64, "decomposed", 0.2)


@pytest.mark.parametrize("line,words", [
    ('{"prompt": "x", "sed": 1}', ["unknown key", "'sed'", "seed"]),
    ("not json", ["not valid JSON"]),
    ('["a list"]', ["JSON object"]),
    ('{"id": "x"}', ["prompt"]),
    ('{"prompt": "   "}', ["prompt"]),
    ('{"prompt": "x", "seed": -1}', ["seed"]),
    ('{"prompt": "x", "seed": 1.5}', ["seed"]),
    ('{"prompt": "x", "num_frames": 0}', ["num_frames"]),
    ('{"prompt": "x", "num_inference_steps": true}', ["num_inference_steps"]),
    ('{"prompt": "x", "height": 60}', ["height", "divisible by 8"]),
    ('{"prompt": "x", "guidance_scale": "high"}', ["guidance_scale"]),
    ('{"prompt": "x", "noise": "pink"}', ["noise", "decomposed"]),
    ('{"prompt": "x", "noise_ratio": 2}', ["noise_ratio"]),
    ('{"prompt": "x", "negative_prompt": ["a"]}', ["negative_prompt"]),
    ('{"prompt": "x", "id": "../escape"}', ["id", "letters"]),
    ('{"prompt": "x", "id": "ok"}', ["already used on line 1"]),
])
def test_a_bad_line_is_reported_with_its_line_number(tmp_path, line, words):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "first", "id": "ok"}, line, {"prompt": "third"}])
    items, errors = read_items(path, defaults(), geometry=(256, 8))  # the published checkpoints' sizes
    assert [i.line for i in items] == [1, 3]
    assert len(errors) == 1 and errors[0]["line"] == 2
    assert all(w in errors[0]["error"] for w in words), errors[0]


def test_options_are_checked_before_ray_starts(tmp_path, tiny_pipeline_dir, capsys):
    with pytest.raises(ValueError, match="workers"):
        BatchOptions(model=tiny_pipeline_dir, workers=0).check()
    with pytest.raises(ValueError, match="model_index.json"):
        BatchOptions(model=str(tmp_path)).check()
    with pytest.raises(ValueError, match="num_frames"):
        BatchOptions(model=tiny_pipeline_dir, defaults={"num_frames": -2}).check()
    with pytest.raises(ValueError, match="device: .*without --num-gpus-per-worker"):
        BatchOptions(model=tiny_pipeline_dir, device="cuda").check()
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": "x"}])
    for extra, word in ((["--workers", "0"], "--workers"), (["--height", "13"], "--height"),
                        (["--num-gpus-per-worker", "-1"], "--num-gpus-per-worker")):
        code = main(["batch", str(prompts), "-o", str(tmp_path / "out"), "--model", tiny_pipeline_dir, *extra])
        err = capsys.readouterr().err
        assert code == 2 and word in err and len(err.strip().splitlines()) == 1
    assert main(["batch", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_bad_lines_go_to_stderr_and_errors_jsonl_and_the_exit_code_is_1(tmp_path, tiny_pipeline_dir, capsys):
    prompts = write_lines(tmp_path / "p.jsonl", ['{"prompt": "x", "steps": 3}', "{oops"])
    code = main(["batch", str(prompts), "-o", str(tmp_path / "out"), "--model", tiny_pipeline_dir, "-q"])
    captured = capsys.readouterr()
    assert code == 1 and "0/0 videos" in captured.out and "2 invalid" in captured.out
    assert f"{prompts}:1: unknown key(s) ['steps']" in captured.err and f"{prompts}:2: not valid JSON" in captured.err
    assert [json.loads(e)["line"] for e in (tmp_path / "out" / ERRORS).read_text().splitlines()] == [1, 2]


# ----------------------------------------------------------------------------- resume bookkeeping (no Ray)


def test_plan_skips_complete_items_and_compacts_the_manifest(tmp_path, tiny_pipeline_dir):
    import shutil
    model = shutil.copytree(tiny_pipeline_dir, tmp_path / "model")
    run = run_spec(BatchOptions(model=str(model)))
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": f"p{i}", "id": f"v{i}", **FAST} for i in range(5)])
    items, _ = read_items(path, defaults())
    out = tmp_path / "out"
    out.mkdir()
    records = []
    for item in items + [items[0]]:  # v0 twice: the last line wins
        (out / f"{item.id}.mp4").write_bytes(b"x" * 100)
        records.append({"id": item.id, **item_spec(item, run), "bytes": 100})
    records.append({"id": "old", **item_spec(items[0], run), "bytes": 3})  # an id no longer in the file
    (out / "old.mp4").write_bytes(b"abc")
    records[2]["settings"] = {**records[2]["settings"], "num_frames": 3}  # v2: made with other settings
    (out / "v3.mp4").write_bytes(b"x" * 60)  # v3: cut short
    (out / "v4.mp4").unlink()  # v4: missing
    (out / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in records) + '{"id": "v1", "byt')  # killed mid-line
    pending, keep = plan(items, run, out)
    assert [i.id for i in pending] == ["v2", "v3", "v4"]
    assert sorted(r["id"] for r in keep) == ["old", "v0", "v1"]
    assert plan(items, run_spec(BatchOptions(model=str(model), fps=4)), out)[0] == items  # other output options
    os.utime(model / "unet" / "config.json", ns=(1, 1))  # the model folder changed (retrained, re-saved)
    assert plan(items, run_spec(BatchOptions(model=str(model))), out)[0] == items

    folder = OutputFolder(out)
    (out / ".v3.mp4.123.part").write_bytes(b"half")
    try:
        with pytest.raises(ValueError, match="another `videofusion batch`"):
            OutputFolder(out)
        folder.start_manifest(keep)
    finally:
        folder.close()
    assert [r["id"] for r in manifest_lines(out)] == ["v1", "v0", "old"]


def test_worker_reports_a_failing_item_and_makes_the_others(tiny_pipeline_dir, models_one_thread):
    options = {**vars(BatchOptions(model=tiny_pipeline_dir)), "threads": 1}
    worker = BatchWorker(options)
    good = {"id": "good", "prompt": "a red circle", "seed": 3, "settings": {**PIPELINE_DEFAULTS, **FAST},
            "video": None}
    bad = {"id": "bad", "prompt": "x", "seed": 3, "settings": {**PIPELINE_DEFAULTS, **FAST, "num_frames": "two"},
           "video": None}
    out = worker({"item": np.array([json.dumps(good), json.dumps(bad)])})
    assert out["id"] == ["good", "bad"]
    ok, failed = (json.loads(r) for r in out["result"])
    assert "num_frames" in failed["error"] and out["mp4"][1] == b""
    assert (ok["num_frames"], ok["height"], ok["width"]) == (2, 16, 16) and out["mp4"][0][4:8] == b"ftyp"
    # the item's video is the public API's for that seed
    from videofusion import DiffusionPipeline
    from videofusion.io.video import to_uint8_frames
    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle", generator=[torch.Generator().manual_seed(3)], **FAST).frames[0]
    assert hashlib.sha256(to_uint8_frames(frames).tobytes()).hexdigest() == ok["frames_sha256"]


def test_items_with_lora_load_each_adapter_once_and_use_it_for_that_item(tiny_pipeline_dir, tmp_path,
                                                                         models_one_thread):
    from lora_oracle import UNET_TARGETS, add_peft_adapter, diffusers_unet, save_diffusers_lora
    sd, config = add_peft_adapter(diffusers_unet(tiny_pipeline_dir), "x", UNET_TARGETS, seed=1)
    save_diffusers_lora(str(tmp_path / "style"), sd, config)
    defaults = Defaults(dict(PIPELINE_DEFAULTS), dict(VIDEO_TO_VIDEO_PIPELINE_DEFAULTS))
    item = parse_item({"prompt": "a red circle", "lora": "style:0.5"}, 1, defaults, folder=tmp_path)
    assert item.lora == ((str(tmp_path / "style"), 0.5),)
    assert parse_item({"prompt": "p", "lora": ["style", "org/some-lora:2"]}, 1, defaults, folder=tmp_path).lora == \
        ((str(tmp_path / "style"), 1.0), ("org/some-lora", 2.0))
    with pytest.raises(ValueError, match="lora: 'missing.safetensors' is neither a file or folder"):
        parse_item({"prompt": "p", "lora": "missing.safetensors"}, 1, defaults, folder=tmp_path)
    with pytest.raises(ValueError, match="lora: must be"):
        parse_item({"prompt": "p", "lora": 3}, 1, defaults, folder=tmp_path)
    assert item_spec(item, {})["lora"][0][:2] == [str(tmp_path / "style"), 0.5]  # a changed adapter re-runs
    worker = BatchWorker({**vars(BatchOptions(model=tiny_pipeline_dir)), "threads": 1})
    rows = [{"id": i, "prompt": "a red circle", "seed": 3, "settings": {**PIPELINE_DEFAULTS, **FAST}, "video": None,
             "lora": lora} for i, lora in (("with", item.lora), ("without", ()), ("again", item.lora))]
    out = worker({"item": np.array([json.dumps(r) for r in rows])})
    with_lora, without, again = (json.loads(r)["frames_sha256"] for r in out["result"])
    assert with_lora == again != without and worker.adapters == {str(tmp_path / "style"): "lora_0"}


def test_items_with_a_video_are_video_to_video(tiny_pipeline_dir, tmp_path, models_one_thread):
    from videofusion import VideoToVideoSDPipeline, export_to_gif
    from videofusion.io.video import to_uint8_frames
    (tmp_path / "in").mkdir()
    source = np.random.default_rng(0).random((3, 16, 16, 3), dtype=np.float32)
    export_to_gif(source, str(tmp_path / "in" / "clip.gif"), fps=4)
    prompts = write_lines(tmp_path / "p.jsonl", [
        {"prompt": "a blue circle", "id": "v2v", "video": "in/clip.gif", "strength": 0.5, "num_inference_steps": 4},
        {"prompt": "x", "video": "in/missing.gif"}, {"prompt": "x", "strength": 0.5},
        {"prompt": "x", "video": "in/clip.gif", "num_frames": 4}, {"prompt": "x", "video": "in/clip.gif", "strength": 0},
    ])
    items, errors = read_items(prompts, defaults())
    assert [i.id for i in items] == ["v2v"] and items[0].video == str(tmp_path / "in" / "clip.gif")
    assert items[0].settings["guidance_scale"] == 15.0  # video-to-video's default
    assert [e["line"] for e in errors] == [2, 3, 4, 5]
    assert "not a video file" in errors[0]["error"] and "only for an item with a video" in errors[1]["error"]
    assert "strength" in errors[3]["error"]
    worker = BatchWorker({**vars(BatchOptions(model=tiny_pipeline_dir)), "threads": 1})
    out = worker({"item": np.array([json.dumps(vars(items[0]))])})
    result = json.loads(out["result"][0])
    assert "error" not in result and result["num_frames"] == 3
    pipe = VideoToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a blue circle", video=str(tmp_path / "in" / "clip.gif"), strength=0.5, num_inference_steps=4,
                  generator=[torch.Generator().manual_seed(items[0].seed)]).frames[0]
    assert hashlib.sha256(to_uint8_frames(frames).tobytes()).hexdigest() == result["frames_sha256"]


# ----------------------------------------------------------------------------- on a local Ray cluster


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray (2 CPUs) for the module; its address lets subprocesses join it."""
    ray = pytest.importorskip("ray")
    import logging
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_USAGE_STATS_ENABLED", "0")
        env.setenv("OMP_WAIT_POLICY", "PASSIVE")  # Ray's processes inherit it: no spinning on a busy machine
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                 _system_config={"worker_niceness": 0})  # as run_batch's own local Ray
        yield ray.get_runtime_context().gcs_address
        ray.shutdown()


@pytest.fixture(scope="module")
def twelve(tmp_path_factory):
    """12 prompts (3 with their own seed) and 2 malformed lines, on lines 5 and 9."""
    lines = [{"prompt": f"a shape {i}", **FAST, **({"seed": i} if i % 4 == 0 else {})} for i in range(12)]
    lines.insert(4, '{"prompt": "a red circle", "sed": 1}')
    lines.insert(8, '{"prompt": "unterminated')
    return write_lines(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", lines)


@pytest.fixture(scope="module")
def two_worker_run(ray_cluster, twelve, tiny_pipeline_dir, tmp_path_factory):
    import ray.data
    out = tmp_path_factory.mktemp("two") / "out"
    context = ray.data.DataContext.get_current()
    before, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 600  # both workers take items
    try:
        summary = run_batch(twelve, out, BatchOptions(model=tiny_pipeline_dir, workers=2), progress=False)
    finally:
        context.wait_for_min_actors_s = before
    return out, summary


@needs_ray
def test_twelve_prompts_on_two_workers_give_twelve_videos_and_a_manifest(two_worker_run):
    out, summary = two_worker_run
    assert summary == {**summary, "items": 12, "generated": 12, "skipped": 0, "failed": 0, "invalid": 2}
    records = manifest_lines(out)
    assert len(records) == 12 and len({r["id"] for r in records}) == 12
    for r in records:
        video = decode(out / r["file"])
        assert video.shape == (2, 16, 16, 3) and r["num_frames"] == 2
        assert r["bytes"] == (out / r["file"]).stat().st_size and r["seconds"] > 0 and r["worker"]
        assert r["settings"]["num_inference_steps"] == 2
    assert {r["id"]: r["seed"] for r in records}["line-000001"] == 0  # the line's own seed
    assert len({r["worker"] for r in records}) == 2
    assert {r["threads"] for r in records} == {default_threads()}  # as generate's default: the same videos
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, ERRORS, ".videofusion-batch.lock"]
                                                           + [r["file"] for r in records])
    errors = [json.loads(line) for line in (out / ERRORS).read_text().splitlines()]
    assert [e["line"] for e in errors] == [5, 9] and "sed" in errors[0]["error"]


def kill_first_worker_once(out: Path, killed: list) -> None:
    """Watch out/manifest.jsonl; SIGKILL the worker that wrote its first line (a Ray actor), once."""
    deadline = time.time() + 300
    while time.time() < deadline and not killed:
        lines = (out / MANIFEST).read_text().splitlines() if (out / MANIFEST).is_file() else []
        if lines:
            pid = int(json.loads(lines[0])["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)


@needs_ray
def test_one_worker_killed_mid_run_gives_identical_frames_and_a_rerun_skips_everything(
        two_worker_run, twelve, tiny_pipeline_dir, tmp_path):
    out2, _ = two_worker_run
    out1 = tmp_path / "one"
    killed: list[int] = []
    watcher = threading.Thread(target=kill_first_worker_once, args=(out1, killed), daemon=True)
    watcher.start()
    summary = run_batch(twelve, out1, BatchOptions(model=tiny_pipeline_dir, workers=1), progress=False)
    watcher.join()
    assert killed and summary["generated"] == 12 and summary["failed"] == 0  # Ray Data replaced the actor
    one = {r["id"]: r for r in manifest_lines(out1)}
    two = {r["id"]: r for r in manifest_lines(out2)}
    assert len(one) == 12 and sum(r["worker"].endswith(f":{killed[0]}") for r in one.values()) < 12
    assert {k: r["frames_sha256"] for k, r in one.items()} == {k: r["frames_sha256"] for k, r in two.items()}
    assert len({r["frames_sha256"] for r in one.values()}) == 12  # and they are 12 different videos
    for item_id in one:
        np.testing.assert_array_equal(decode(out1 / f"{item_id}.mp4"), decode(out2 / f"{item_id}.mp4"))

    before = (out1 / MANIFEST).read_bytes()
    again = run_batch(twelve, out1, BatchOptions(model=tiny_pipeline_dir, workers=1), progress=False)
    assert (again["skipped"], again["generated"]) == (12, 0)
    assert (out1 / MANIFEST).read_bytes() == before


@needs_ray
def test_kill_the_job_then_rerun_finishes_without_loss_or_duplicates(ray_cluster, tiny_pipeline_dir, tmp_path):
    # slower items (8 steps) so the kill lands mid-run
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": f"a shape {i}", "id": f"v{i:02d}", "num_frames": 2,
                                                  "num_inference_steps": 8} for i in range(12)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "videofusion.apps.main", "batch", str(prompts), "-o", str(out), "--model",
               tiny_pipeline_dir, "--workers", "2", "--threads", "1", "-q"]
    log = open(tmp_path / "job.log", "w")
    job = subprocess.Popen(command + ["--ray-address", ray_cluster], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        if (out / MANIFEST).is_file() and len((out / MANIFEST).read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert job.poll() is None, f"the job ended before it was killed: {(tmp_path / 'job.log').read_text()[-2000:]}"
    job.send_signal(signal.SIGKILL)
    job.wait()
    log.close()
    before = {r["id"]: r for r in manifest_lines(out)}
    assert 3 <= len(before) < 12
    with open(out / MANIFEST, "a") as f:
        f.write('{"id": "v11", "file": "v11.mp')  # as if killed while appending a line

    (out / ".v00.mp4.999.part").write_bytes(b"half a video")  # as if killed while writing a file

    # rerun (in this process, on the same cluster: one Ray start per test module)
    options = BatchOptions(model=tiny_pipeline_dir, workers=2, threads=1)
    summary = run_batch(prompts, out, options, progress=False)
    assert (summary["skipped"], summary["generated"], summary["failed"]) == (len(before), 12 - len(before), 0)
    records = manifest_lines(out)
    assert sorted(r["id"] for r in records) == [f"v{i:02d}" for i in range(12)]  # all there, none twice
    assert all(records[i] == r for i, r in enumerate(before.values()))  # finished lines kept as they were
    for r in records:
        assert decode(out / r["file"]).shape == (2, 16, 16, 3)
    assert not list(out.glob(".*.part"))


def descendants(pid: int) -> dict[int, str]:
    """The processes below ``pid`` (Linux /proc), each with its start time."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append((int(entry.name), fields[19]))
    found, todo = {}, [pid]
    while todo:
        for child, start in children.get(todo.pop(), []):
            found[child] = start
            todo.append(child)
    return found


def alive(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` still running (not zombies, not a new process with a reused pid)."""
    out = []
    for pid, start in processes.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[19] == start and fields[0] != "Z":
            out.append(pid)
    return out


@needs_ray
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux's /proc")
def test_a_killed_command_takes_its_local_ray_along_and_ray_prints_nothing(tiny_pipeline_dir, tmp_path):
    """kill -9 of `videofusion batch` (its own local Ray): every process Ray started for it is gone soon
    after, not a minute later; and with -q the terminal shows none of Ray's own log lines."""
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": f"a shape {i}", "id": f"v{i:02d}", "num_frames": 2,
                                                  "num_inference_steps": 8} for i in range(12)])
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "videofusion.apps.main", "batch", str(prompts), "-o", str(out),
                            "--model", tiny_pipeline_dir, "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and job.poll() is None and not (
            (out / MANIFEST).is_file() and (out / MANIFEST).read_text().strip()):
        time.sleep(0.05)
    assert job.poll() is None, job.communicate()
    ray_processes = descendants(job.pid)
    assert len(ray_processes) >= 3  # Ray's head, raylet, agents, the worker
    job.send_signal(signal.SIGKILL)
    _, err = job.communicate()
    deadline = time.time() + 30
    while alive(ray_processes) and time.time() < deadline:
        time.sleep(0.2)
    assert not alive(ray_processes), [Path(f"/proc/{p}/cmdline").read_bytes()[:80] for p in alive(ray_processes)]
    assert err.decode().strip() == "", err.decode()  # Ray's warnings went to DIR/ray.log
    assert (out / "ray.log").is_file()

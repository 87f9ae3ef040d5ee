"""`videofusion web`: validation of visitors' settings, the generate function, the app and the command.

The browser test is tests/e2e/test_web_browser.py."""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before anything imports gradio

import av
import pytest
import torch

from videofusion import DiffusionPipeline
from videofusion.apps.main import build_parser, main
from videofusion.schedulers import SCHEDULERS, make_scheduler
from videofusion.apps.web import DEFAULT_SCHEDULER, MAX_SEED, NO_ADAPTER, Limits, WebService, adapter_label, model_label

GOOD = dict(prompt="a red circle moving left", negative_prompt="", num_frames=2, num_inference_steps=2,
            guidance_scale=7.5, seed=3, scheduler=DEFAULT_SCHEDULER, fps=4)


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    return DiffusionPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float32)


@pytest.fixture()
def service(pipe, tmp_path):
    return WebService(pipe, "tiny", Limits(max_frames=4, max_steps=3, max_guidance=12), output_dir=str(tmp_path),
                      defaults={"num_frames": 16, "num_inference_steps": 25, "guidance_scale": 7.5})


def validate(service, **changes):
    return service.validate(**{**GOOD, **changes})


# ----------------------------------------------------------------------------- limits and validation

@pytest.mark.parametrize("kwargs,word", [
    (dict(max_frames=0), "max_frames"), (dict(max_steps=2.5), "max_steps"), (dict(height=0), "height"),
    (dict(max_guidance=0.5), "max_guidance"), (dict(queue_size=0), "queue_size"),
])
def test_bad_limits_name_the_option(kwargs, word):
    with pytest.raises(ValueError, match=word):
        Limits(**kwargs)


def test_a_size_the_models_vae_cannot_make_is_refused_before_serving(pipe, tmp_path):
    assert pipe.vae_scale_factor == 2
    with pytest.raises(ValueError, match="width: must be divisible by 2"):
        WebService(pipe, "tiny", Limits(height=60, width=61), output_dir=str(tmp_path))
    assert WebService(pipe, "tiny", Limits(height=60, width=62), output_dir=str(tmp_path)).width == 62


def test_valid_settings_become_a_request_with_ints(service):
    r = validate(service, num_frames=4.0, num_inference_steps=3, guidance_scale=12, seed=MAX_SEED, fps=60,
                 prompt="  a blue square  ", scheduler="euler")
    assert (r.num_frames, r.num_inference_steps, r.seed, r.prompt) == (4, 3, MAX_SEED, "a blue square")
    assert isinstance(r.num_frames, int) and isinstance(r.fps, float) and r.scheduler == "euler"
    assert 0 <= validate(service, seed=None).seed <= MAX_SEED  # empty seed box: a random seed


@pytest.mark.parametrize("changes,word", [
    (dict(prompt=""), "prompt"), (dict(prompt="   "), "prompt"), (dict(prompt=None), "prompt"),
    (dict(prompt="x" * 1001), "prompt"), (dict(negative_prompt=5), "negative prompt"),
    (dict(num_frames=5), "frames"), (dict(num_frames=0), "frames"), (dict(num_frames=2.5), "frames"),
    (dict(num_frames=True), "frames"), (dict(num_inference_steps=4), "steps"),
    (dict(num_inference_steps=float("nan")), "steps"), (dict(guidance_scale=12.5), "guidance scale"),
    (dict(guidance_scale=0.5), "guidance scale"), (dict(seed=-1), "seed"), (dict(seed=MAX_SEED + 1), "seed"),
    (dict(seed="7"), "seed"), (dict(scheduler="warp-drive"), "scheduler"),
    (dict(scheduler="/etc/passwd"), "scheduler"), (dict(fps=0), "fps"), (dict(fps=61), "fps"),
])
def test_bad_settings_raise_a_value_error_naming_the_field(service, changes, word):
    with pytest.raises(ValueError, match=word):
        validate(service, **changes)


def test_defaults_are_clamped_to_the_limits_and_size_is_the_models(service, pipe):
    assert service.defaults == {"num_frames": 4, "num_inference_steps": 3, "guidance_scale": 7.5, "fps": 8}
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert (service.height, service.width) == (native, native)
    assert service.scheduler_names == (DEFAULT_SCHEDULER, *sorted(SCHEDULERS))


def test_visitors_never_see_server_paths(tmp_path):
    assert model_label(str(tmp_path), is_demo=False) == tmp_path.name
    assert model_label("damo-vilab/text-to-video-ms-1.7b", is_demo=False) == "damo-vilab/text-to-video-ms-1.7b"
    assert model_label(str(tmp_path), is_demo=True) == "built-in demo model"


# ----------------------------------------------------------------------------- generation

def test_generate_writes_h264_with_progress_and_settings(service):
    steps = []
    path, settings = service.generate(validate(service), on_step=lambda i, n: steps.append((i, n)))
    assert steps == [(1, 2), (2, 2)]
    assert path.endswith("a-red-circle-moving-left-seed3.mp4") and path.startswith(str(service.output_dir))
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert float(stream.average_rate) == 4
        assert sum(1 for _ in container.decode(stream)) == 2
    assert settings["seed"] == 3 and settings["num_frames"] == 2 and settings["duration_s"] == 0.5
    assert settings["scheduler"] == "DDIMScheduler" and settings["model"] == "tiny"
    assert settings["command"].startswith("videofusion generate 'a red circle moving left' --model tiny")
    assert "--seed 3" in settings["command"] and "--scheduler" not in settings["command"]


@pytest.mark.parametrize("scheduler", [DEFAULT_SCHEDULER, "euler_a"])
def test_generate_matches_the_pipeline_called_as_the_cli_does(service, pipe, monkeypatch, scheduler):
    """Same frames as `videofusion generate` with the same settings (per-video generator, fresh scheduler),
    and the loaded pipeline's scheduler is left as it was."""
    import videofusion.io.video
    captured = []
    real_export = videofusion.io.video.export_to_video
    monkeypatch.setattr(videofusion.io.video, "export_to_video",
                        lambda frames, path, fps: captured.append(frames.copy()) or real_export(frames, path, fps))
    base = pipe.scheduler
    _, settings = service.generate(validate(service, scheduler=scheduler, negative_prompt="blurry", seed=11))
    assert pipe.scheduler is base
    direct = make_scheduler(scheduler, base.config) if scheduler != DEFAULT_SCHEDULER else base
    pipe.scheduler = direct
    try:
        expected = pipe("a red circle moving left", negative_prompt="blurry", num_frames=2, num_inference_steps=2,
                        guidance_scale=7.5, generator=[torch.Generator("cpu").manual_seed(11)]).frames[0]
    finally:
        pipe.scheduler = base
    assert captured and (captured[0] == expected).all()
    other_seed = []
    monkeypatch.setattr(videofusion.io.video, "export_to_video",
                        lambda frames, path, fps: other_seed.append(frames.copy()) or path)
    service.generate(validate(service, scheduler=scheduler, negative_prompt="blurry", seed=12))
    assert not (other_seed[0] == expected).all()
    if scheduler != DEFAULT_SCHEDULER:
        assert settings["scheduler"] == scheduler and f"--scheduler {scheduler}" in settings["command"]


def test_operator_size_is_used_and_old_outputs_are_pruned(pipe, tmp_path):
    service = WebService(pipe, "tiny", Limits(max_frames=2, max_steps=1, height=24, width=32),
                         output_dir=str(tmp_path), keep_seconds=0)
    old = tmp_path / "old"
    old.mkdir()
    os.utime(old, (0, 0))
    path, settings = service.generate(validate(service, num_frames=1, num_inference_steps=1))
    assert not old.exists()
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 24)
    assert "--height 24 --width 32" in settings["command"]


def test_a_failing_call_restores_the_scheduler_and_releases_the_lock(service, pipe, monkeypatch):
    base = pipe.scheduler
    monkeypatch.setattr(type(pipe), "__call__", lambda self, *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        service.generate(validate(service, scheduler="heun"))
    assert pipe.scheduler is base and not service.lock.locked()


# ----------------------------------------------------------------------------- the Gradio app

def test_app_builds_with_limits_queue_and_a_generate_endpoint(service):
    gr = pytest.importorskip("gradio", reason="the web extra (gradio) is not installed")
    from videofusion.apps.web import build_app
    app = build_app(service)
    assert isinstance(app, gr.Blocks)
    assert app._queue.default_concurrency_limit == 1 and app._queue.max_size == 20
    by_id = {b.elem_id: b for b in app.blocks.values() if getattr(b, "elem_id", None)}
    assert {"prompt", "negative-prompt", "num-frames", "steps", "guidance-scale", "seed", "random-seed",
            "scheduler", "fps", "generate", "result-video", "download", "settings"} <= set(by_id)
    assert by_id["num-frames"].maximum == 4 and by_id["steps"].maximum == 3
    assert by_id["guidance-scale"].maximum == 12 and by_id["num-frames"].value == 4
    assert [v for _, v in by_id["scheduler"].choices] == list(service.scheduler_names)
    assert not by_id["result-video"].interactive and not by_id["download"].interactive  # no uploads
    fn = next(f for f in app.fns.values() if f.api_name == "generate")
    assert fn.concurrency_limit in (1, "default")
    with pytest.raises(gr.Error, match="prompt"):  # bad input becomes a gr.Error, shown in the page
        fn.fn("", "", 2, 2, 7.5, 0, DEFAULT_SCHEDULER, 8, NO_ADAPTER, False)
    progress = []  # the page's progress bar is fed by the pipeline's callback
    assert not by_id["adapter"].visible and by_id["prompt-weighting"].value is False  # no adapters configured
    video, download, settings = fn.fn("a red circle", "", 2, 2, 7.5, 0, DEFAULT_SCHEDULER, 8, NO_ADAPTER, False,
                                      progress=lambda value, desc=None: progress.append((value, desc)))
    assert progress == [((0, 2), "denoising"), ((1, 2), "denoising"), ((2, 2), "denoising")]
    assert video == download and os.path.isfile(video) and settings["num_inference_steps"] == 2


def test_operator_adapters_and_prompt_weighting(tiny_pipeline_dir, tmp_path):
    """Visitors choose among the operator's adapters by name (none by default) and may weigh the prompt;
    the page's command says both."""
    from lora_oracle import UNET_TARGETS, add_peft_adapter, diffusers_unet, save_diffusers_lora
    sd, config = add_peft_adapter(diffusers_unet(tiny_pipeline_dir), "x", UNET_TARGETS, seed=1)
    path = save_diffusers_lora(str(tmp_path / "style"), sd, config)
    pipe = DiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    from videofusion.adapters import load_lora
    name = adapter_label(str(tmp_path / "style"), {})
    pipe.lora.load(load_lora(path), name)
    service = WebService(pipe, "tiny", Limits(max_frames=4, max_steps=3), output_dir=str(tmp_path / "out"),
                         adapters={name: 0.8})
    assert name == "style" and adapter_label("/x/style/", {"style": 1}) == "style-2"
    with pytest.raises(ValueError, match="adapter: 'other' is not one of \\['none', 'style'\\]"):
        validate(service, adapter="other")
    plain = service.pipe  # the same request with and without the adapter: different videos
    request = validate(service, adapter="style", prompt_weighting=True, prompt="a (red:1.3) circle")
    _, settings = service.generate(request)
    assert settings["adapter"] == "style" and "--lora style:0.8 --prompt-weighting" in settings["command"]
    assert plain.get_active_adapters() == ["style"] and plain.lora.per_model["unet"].active == {"style": 0.8}
    service.generate(validate(service))
    assert plain.get_active_adapters() == [] and not plain.prompt_weighting
    with pytest.raises(ValueError, match="not adapters loaded"):
        WebService(pipe, "tiny", adapters={"missing": 1.0})


# ----------------------------------------------------------------------------- the command

def test_web_command_defaults_bind_to_this_machine():
    args = build_parser().parse_args(["web"])
    assert (args.host, args.port, args.model, args.max_frames, args.max_steps) == ("127.0.0.1", 7860, None, 32, 50)


@pytest.mark.parametrize("extra,word", [
    (["--port", "0"], "--port"), (["--max-frames", "0"], "--max-frames"), (["--width", "31"], "--width"),
    (["--device", "cuda:3"], "--device"),
])
def test_web_bad_options_are_one_line_and_exit_code_2(tiny_pipeline_dir, capsys, extra, word, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    code = main(["web", "--model", tiny_pipeline_dir, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

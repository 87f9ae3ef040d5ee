"""videofusion distill: latent consistency distillation of a tiny pipeline into an LCM student; a resumed run
ends with the weights of an uninterrupted one; the loss goes down on a fixed batch; bad configs are refused
before any weights load."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import unet_state

from videofusion.training.distill import DistillConfig, consistency_loss, distill, make_student, solver_grid


@pytest.fixture(autouse=True)
def _one_thread(models_one_thread):
    yield


def config(tiny_pipeline_dir, out, **kw) -> DistillConfig:
    base = dict(model=tiny_pipeline_dir, output_dir=str(out), data={"shapes": 4, "seed": 0}, num_frames=4, height=16,
                width=16, steps=4, batch_size=2, learning_rate=1e-3, checkpoint_every=2, seed=3, time_cond_proj_dim=8,
                guidance_scale=[2.0, 8.0], skip_steps=100, ema_decay=0.9, noise_ratio=0.5)
    return DistillConfig(**{**base, **kw})



def test_distill_writes_an_lcm_student_that_samples_in_few_steps(tiny_pipeline_dir, tmp_path):
    from videofusion import LCMScheduler, TextToVideoSDPipeline
    summary = distill(config(tiny_pipeline_dir, tmp_path / "d"), progress=False)
    out = tmp_path / "d"
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss_avg50"])
    assert json.loads((out / "log.json").read_text())["config"]["guidance_scale"] == [2.0, 8.0]
    assert (out / "loss.png").stat().st_size > 0 and not list(out.glob(".*.part"))
    pipe = TextToVideoSDPipeline.from_pretrained(str(out / "model"))
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.original_inference_steps == 10  # 1000 / skip_steps
    assert pipe.scheduler.config.prediction_type == "epsilon"  # the teacher's schedule
    assert pipe.unet.config.time_cond_proj_dim == 8
    index = json.loads((out / "model" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"]
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle", num_inference_steps=2, guidance_scale=5.0, num_frames=4,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 4, 16, 16, 3) and np.isfinite(frames).all()


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    straight = distill(config(tiny_pipeline_dir, tmp_path / "straight"), progress=False)
    distill(config(tiny_pipeline_dir, tmp_path / "resumed", steps=2), progress=False)
    resumed = distill(config(tiny_pipeline_dir, tmp_path / "resumed"), progress=False)
    a, b = unet_state(tmp_path / "straight" / "model"), unet_state(tmp_path / "resumed" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss_avg50"] == straight["final_loss_avg50"]
    for name in ("straight", "resumed"):
        state = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        assert state["step"] == 4 and len(state["losses"]) == 4
    target_a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["target"]
    target_b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["target"]
    assert all(torch.equal(target_a[k], target_b[k]) for k in target_a)  # the EMA target network too


def test_the_loss_goes_down_on_a_fixed_batch(tiny_pipeline_dir, tmp_path, monkeypatch):
    """Every step draws the same clip, noise, grid point and guidance scale: after the first optimizer step
    moves the student away from its (lagging) EMA target, the consistency loss falls at every step."""
    monkeypatch.setattr("videofusion.training.distill.step_generator",
                        lambda seed, step: torch.Generator().manual_seed(seed))
    distill(config(tiny_pipeline_dir, tmp_path / "t", data={"shapes": 1, "seed": 0}, steps=10, checkpoint_every=10,
                   ema_decay=None, noise_ratio=0.0), progress=False)
    losses = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)["losses"]
    assert all(b < a for a, b in zip(losses[1:], losses[2:])), losses
    assert losses[-1] < 0.5 * losses[1], losses


def test_a_fixed_scale_student_keeps_the_teachers_architecture(tiny_pipeline_dir, tmp_path):
    from videofusion.models import UNet3DConditionModel
    distill(config(tiny_pipeline_dir, tmp_path / "f", steps=1, embed_guidance=False, guidance_scale=4.0,
                   loss="l2", ema_decay=None), progress=False)
    assert UNet3DConditionModel.from_pretrained(str(tmp_path / "f" / "model"), subfolder="unet") \
        .config.time_cond_proj_dim is None


def test_the_student_starts_as_the_teacher(tiny_pipeline_dir):
    """The guidance projection starts at zero: before training, the student's output is the teacher's at any w."""
    from videofusion.models import UNet3DConditionModel
    from videofusion.pipelines.core import guidance_embedding
    teacher = UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet").eval()
    student = make_student(teacher, config(tiny_pipeline_dir, "unused")).eval()
    x = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(2, 77, 16, generator=torch.Generator().manual_seed(1))
    cond = guidance_embedding(torch.tensor([1.0, 6.5]), 8)
    with torch.no_grad():
        assert torch.equal(student(x, 500, context, timestep_cond=cond).sample, teacher(x, 500, context).sample)
    assert student.config.time_cond_proj_dim == 8 and teacher.config.time_cond_proj_dim is None


def test_grid_and_loss():
    assert solver_grid(1000, 20)[:3].tolist() == [19, 39, 59] and solver_grid(1000, 20)[-1] == 999
    from videofusion.schedulers.lcm import lcm_origin_timesteps
    assert solver_grid(1000, 250).tolist() == lcm_origin_timesteps(1000, 4).tolist()
    a, b = torch.zeros(3), torch.tensor([0.0, 3.0, -4.0])
    assert consistency_loss(a, b, "l2").item() == pytest.approx(25 / 3)
    assert consistency_loss(a, b, "huber", 0.001).item() == pytest.approx((3 + 4 - 2 * (1e-3 - (9 + 1e-6) ** 0.5 + 3))
                                                                          / 3, abs=1e-6)


@pytest.mark.parametrize("change,word", [
    (dict(guidance_scale=[2.0, 8.0], embed_guidance=False), "embed_guidance"),
    (dict(guidance_scale=[8.0, 2.0]), "guidance_scale"),
    (dict(guidance_scale=0.5), "guidance_scale"),
    (dict(student="lora"), "student"),
    (dict(loss="l1"), "loss"),
    (dict(target_ema_decay=1.0), "target_ema_decay"),
    (dict(steps=0), "steps"),
    (dict(skip_steps=30), "skip_steps"),
    (dict(height=13), "height"),
    (dict(data={"shapes": 4, "colour": "red"}), "data"),
    (dict(mixed_precision="fp16", device="cpu"), "fp16"),
])
def test_bad_configs_are_refused_before_any_weights_load(tiny_pipeline_dir, tmp_path, monkeypatch, change, word):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the config was checked")
    monkeypatch.setattr("videofusion.pipelines.text_to_video.TextToVideoSDPipeline.from_pretrained", no_loading)
    with pytest.raises(ValueError, match=word):
        distill(config(tiny_pipeline_dir, tmp_path / "bad", **change), progress=False)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_an_already_distilled_teacher_is_refused(tiny_pipeline_dir, tmp_path):
    import shutil
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_pipeline_dir, folder)
    unet_config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**unet_config, "time_cond_proj_dim": 8}))
    with pytest.raises(ValueError, match="already embeds guidance"):
        distill(config(str(folder), tmp_path / "o"), progress=False)


def test_config_files_and_the_command(tiny_pipeline_dir, tmp_path, capsys):
    from videofusion.apps.main import main
    shipped = DistillConfig.from_file(Path(__file__).resolve().parents[1] / "configs" / "distill-demo.toml")
    assert shipped.guidance_range == (5.0, 10.0) and shipped.embed_guidance and shipped.skip_steps == 20
    path = tmp_path / "d.toml"
    path.write_text(f'model = "{tiny_pipeline_dir}"\noutput_dir = "{tmp_path / "o"}"\ndata = {{ shapes = 2 }}\n'
                    'num_frames = 4\nheight = 16\nwidth = 16\nsteps = 1\ntime_cond_proj_dim = 8\nskip_steps = 250\n')
    assert main(["distill", str(path), "--no-resume", "--threads", "1"]) == 0
    assert "o/model" in capsys.readouterr().out and (tmp_path / "o" / "model" / "model_index.json").is_file()
    path.write_text(path.read_text() + "guidance_scael = 3\n")
    assert main(["distill", str(path)]) == 2
    err = capsys.readouterr().err
    assert "guidance_scael" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_shipped_four_step_student():
    """videofusion/demo/model-4step: an LCMScheduler folder with embedded guidance, as small as the demo model,
    that draws the prompt's colour and direction in 4 steps of one UNet call each."""
    from videofusion import DiffusionPipeline, LCMScheduler
    from videofusion.demo import DEMO_FAST_MODEL_PATH
    from videofusion.demo.evaluation import score_clip
    folder = DEMO_FAST_MODEL_PATH
    assert (folder / "model_index.json").is_file()  # shipped as package data
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 256
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    prompts = ["a red circle moving left", "a blue square moving up"]
    frames = pipe(prompts, num_inference_steps=4, guidance_scale=7.5,
                  generator=[torch.Generator().manual_seed(i) for i in range(2)]).frames
    assert batches == [2] * 4  # one call per step for the whole batch, no classifier-free copy
    for prompt, video in zip(prompts, frames):
        scored = score_clip(video, prompt)
        assert scored["colour_ok"] and scored["direction_ok"], (prompt, scored["predicted"])

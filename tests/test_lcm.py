"""LCMScheduler and embedded guidance against diffusers 0.42.1 (the oracle): the distillation grid, custom
timesteps, strength, the boundary condition, seeded multi-step sampling (every step's prev_sample and denoised
within 1e-5), and a guidance-distilled UNet in the pipeline (one UNet call per step, the guidance weight as
diffusers' LCM pipelines embed it). The class also runs through the shared suite (tests/test_schedulers.py)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from scheduler_oracle import MODELSCOPE_DDIM_CONFIG, close, diffusers_twin, initial_sample, toy_model
from videofusion import LCMScheduler, TextToVideoSDPipeline
from videofusion.pipelines.core import guidance_embedding
from videofusion.schedulers.lcm import consistency_scalings, lcm_origin_timesteps, lcm_timesteps

pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context")]

# the demo model's schedule: v-prediction, zero terminal SNR (the distilled demo model's scheduler reads it)
DEMO = dict(MODELSCOPE_DDIM_CONFIG, prediction_type="v_prediction", rescale_betas_zero_snr=True,
            timestep_spacing="trailing")


@pytest.fixture(autouse=True)
def _one_thread(models_one_thread):
    yield


def both(config=MODELSCOPE_DDIM_CONFIG, **overrides):
    return LCMScheduler.from_config(config, **overrides), diffusers_twin(LCMScheduler).from_config(config, **overrides)


def sample(scheduler, schedule: dict, seed: int = 7, shape=(2, 4, 8, 8)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(prev_sample, denoised) of every step of a seeded run with the toy model."""
    scheduler.set_timesteps(**schedule)
    x, g, out = initial_sample(shape=shape), torch.Generator().manual_seed(seed), []
    for t in scheduler.timesteps:
        prev, denoised = scheduler.step(toy_model(x, t), t, x, generator=g, return_dict=False)
        out.append((prev, denoised))
        x = prev
    return out


def same(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs)
    for i, ((a, da), (b, db)) in enumerate(zip(ours, theirs)):
        close(a, b, 1e-5, f"prev_sample {i}")
        close(da, db, 1e-5, f"denoised {i}")


CASES = [
    (MODELSCOPE_DDIM_CONFIG, {}, {"num_inference_steps": 4}),
    (DEMO, {}, {"num_inference_steps": 1}),
    (DEMO, {}, {"num_inference_steps": 2}),
    (DEMO, {}, {"num_inference_steps": 4}),
    (DEMO, {}, {"num_inference_steps": 8}),
    (DEMO, {"original_inference_steps": 25}, {"num_inference_steps": 4}),
    (DEMO, {}, {"num_inference_steps": 4, "original_inference_steps": 10}),
    (DEMO, {"timestep_scaling": 1.0}, {"num_inference_steps": 6}),
    (DEMO, {}, {"timesteps": [999, 759, 499, 259]}),
    (DEMO, {}, {"timesteps": [999, 600, 301, 20]}),  # off the grid: a warning, then used as given
    (DEMO, {}, {"num_inference_steps": 4, "strength": 0.5}),
    (DEMO, {}, {"timesteps": [999, 759, 499, 259, 79], "strength": 0.6}),
    (MODELSCOPE_DDIM_CONFIG, {"prediction_type": "sample", "clip_sample": True}, {"num_inference_steps": 3}),
    (MODELSCOPE_DDIM_CONFIG, {"thresholding": True, "sample_max_value": 1.5}, {"num_inference_steps": 3}),
    (MODELSCOPE_DDIM_CONFIG, {"set_alpha_to_one": False, "beta_schedule": "squaredcos_cap_v2"},
     {"num_inference_steps": 5}),
]


@pytest.mark.parametrize("config,overrides,schedule", CASES, ids=[f"{i}-{s}" for i, (_, _, s) in enumerate(CASES)])
def test_sampling_matches_diffusers(config, overrides, schedule):
    """Timesteps, num_inference_steps, and every step's prev_sample (re-noised with the generator's draws) and
    denoised, for each prediction type diffusers' class takes."""
    ours, theirs = both(config, **overrides)
    ours_run, theirs_run = sample(ours, schedule), sample(theirs, schedule)
    assert torch.equal(ours.timesteps, theirs.timesteps) and ours.timesteps.dtype == torch.int64
    assert ours.num_inference_steps == theirs.num_inference_steps
    same(ours_run, theirs_run)
    if not ("timesteps" in schedule and "strength" in schedule):  # (diffusers then re-noises the last step too)
        close(ours_run[-1][0], ours_run[-1][1], 0.0, "the last step's prev_sample is its denoised")


def test_grid_and_four_step_schedule():
    """T = 1000, 50 original steps: the grid is 19, 39, ..., 999 and 4 steps are 999, 759, 499, 259."""
    grid = lcm_origin_timesteps(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999 and len(grid) == 50
    assert lcm_timesteps(grid, 4).tolist() == [999, 759, 499, 259]
    sched = LCMScheduler.from_config(DEMO)
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [999, 759, 499, 259]


def test_boundary_condition_matches_diffusers_and_is_the_identity_at_zero():
    ours, theirs = both(DEMO, timestep_scaling=7.0)
    for t in (0, 1, 19, 259, 999):
        for a, b in zip(ours.get_scalings_for_boundary_condition_discrete(torch.tensor(t)),
                        theirs.get_scalings_for_boundary_condition_discrete(torch.tensor(t))):
            assert torch.equal(torch.as_tensor(a), torch.as_tensor(b)), t
    c_skip, c_out = consistency_scalings(torch.tensor([0, 999]))
    assert c_skip.tolist()[0] == 1.0 and c_out.tolist()[0] == 0.0
    assert c_skip[1] < 1e-8 and abs(c_out[1].item() - 1) < 1e-8


def test_generator_list_and_output_fields():
    """One generator per row draws row by row, as diffusers; the output reads as diffusers' LCMSchedulerOutput."""
    runs = []
    for sched in both(DEMO):
        sched.set_timesteps(3)
        x = initial_sample(shape=(2, 4, 8, 8))
        gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
        for t in sched.timesteps:
            out = sched.step(toy_model(x, t), t, x, generator=gens)
            x = out.prev_sample
        runs.append((x, out))
    close(runs[0][0], runs[1][0], 1e-5, "final sample")
    out = runs[0][1]
    assert out.keys() == ["prev_sample", "denoised"] and out[1] is out.denoised and out.pred_original_sample is None


def test_custom_timesteps_warn_like_diffusers(caplog):
    sched = LCMScheduler.from_config(DEMO)
    with caplog.at_level(logging.WARNING, logger="videofusion.schedulers.lcm"):
        sched.set_timesteps(timesteps=[900, 600, 301])
    text = caplog.text
    assert "900" in text and "[600, 301]" in text


BAD = [
    {},
    {"num_inference_steps": 4, "timesteps": [999, 500]},
    {"num_inference_steps": 51},                      # more than the 50-point grid
    {"num_inference_steps": 4, "original_inference_steps": 2000},
    {"timesteps": [500, 999]},
    {"timesteps": [1000, 500]},
    {"num_inference_steps": 30, "strength": 0.5},     # 25 grid points left
]


@pytest.mark.parametrize("schedule", BAD, ids=[str(s) for s in BAD])
def test_bad_schedules_raise_like_diffusers(schedule):
    with pytest.raises(ValueError):
        diffusers_twin(LCMScheduler)().set_timesteps(**schedule)
    with pytest.raises(ValueError):
        LCMScheduler().set_timesteps(**schedule)


# ------------------------------------------------------------------ embedded guidance in the pipeline

def test_guidance_embedding_matches_diffusers():
    from diffusers import LatentConsistencyModelPipeline
    w = torch.tensor([0.0, 1.0, 6.5, 14.0])
    for dim in (256, 32, 5):
        ours = guidance_embedding(w, dim)
        theirs = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert ours.shape == (4, dim)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="w: expected"):
        guidance_embedding(w[None], 8)


@pytest.fixture(scope="module")
def distilled_dir(tmp_path_factory):
    """A tiny diffusers pipeline whose UNet embeds guidance (time_cond_proj_dim 8) and samples with LCM."""
    from diffusers import LCMScheduler as RefLCM

    from helpers import TINY_UNET, make_diffusers_pipeline_folder
    folder = make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("lcm-t2v")),
                                            unet=dict(TINY_UNET, time_cond_proj_dim=8))
    RefLCM.from_config(DEMO).save_pretrained(f"{folder}/scheduler")
    index = json.loads(Path(folder, "model_index.json").read_text())
    Path(folder, "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "LCMScheduler"]}))
    return folder


def reference_latents(folder: str, prompt: str, steps: int, guidance_scale: float, seed: int, frames: int = 4):
    """diffusers' components and LCMScheduler in the loop of its LCM pipelines, frames folded into the batch for
    the scheduler as its TextToVideoSDPipeline does: one UNet call per step with the embedded weight."""
    from diffusers import LatentConsistencyModelPipeline, TextToVideoSDPipeline as RefT2V
    from diffusers import LCMScheduler as RefLCM
    from diffusers.utils.torch_utils import randn_tensor
    ref = RefT2V.from_pretrained(folder)
    scheduler = RefLCM.from_pretrained(folder, subfolder="scheduler")
    embeds, _ = ref.encode_prompt(prompt, "cpu", 1, False)
    g = torch.Generator().manual_seed(seed)
    latents = randn_tensor((1, 4, frames, 8, 8), generator=g, dtype=embeds.dtype)  # the tiny VAE: 2x
    w = torch.tensor(guidance_scale - 1).repeat(1)
    cond = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=8)
    scheduler.set_timesteps(steps)
    calls = 0
    for t in scheduler.timesteps:
        pred = ref.unet(latents, t, encoder_hidden_states=embeds, timestep_cond=cond).sample
        calls += 1
        b, c, f, h, w_ = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w_)
        flat_pred = pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w_)
        flat = scheduler.step(flat_pred, t, flat, generator=g).prev_sample
        latents = flat.reshape(b, f, c, h, w_).permute(0, 2, 1, 3, 4)
    return latents, calls


@pytest.mark.parametrize("steps,guidance_scale", [(4, 7.5), (2, 1.0), (3, 12.0)])
def test_guidance_distilled_pipeline_matches_diffusers(distilled_dir, steps, guidance_scale):
    pipe = TextToVideoSDPipeline.from_pretrained(distilled_dir)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.unet.config.time_cond_proj_dim == 8
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    ours = pipe("a red circle", num_inference_steps=steps, guidance_scale=guidance_scale, num_frames=4,
                height=16, width=16, negative_prompt="blurry", generator=torch.Generator().manual_seed(3),
                output_type="latent").frames
    theirs, calls = reference_latents(distilled_dir, "a red circle", steps, guidance_scale, 3)
    close(ours, theirs, 1e-5, "latents")
    assert batches == [1] * calls  # one UNet call per step, no classifier-free batch; the negative prompt unused


def test_guidance_distilled_video_to_video_runs_one_call_per_step(distilled_dir):
    """VideoToVideoSDPipeline passes negative and positive embeddings; the distilled UNet reads the positive."""
    import numpy as np

    from videofusion import VideoToVideoSDPipeline
    pipe = VideoToVideoSDPipeline.from_pretrained(distilled_dir)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    video = np.random.default_rng(0).random((1, 4, 16, 16, 3), dtype=np.float32)
    frames = pipe("a red circle", video=video, strength=0.6, num_inference_steps=4, guidance_scale=7.5,
                  generator=torch.Generator().manual_seed(0)).frames
    assert frames.shape == (1, 4, 16, 16, 3) and np.isfinite(frames).all()
    assert batches and set(batches) == {1}


def test_mcm_peft_lora_with_lcm_scheduler_matches_diffusers(tiny_pipeline_dir, tmp_path):
    """MCM's ModelScope recipe end to end: a PEFT adapter folder over the UNet's linear and convolution layers
    (``PeftModel.save_pretrained``, as MCM ships its LoRAs), LCMScheduler read from the model's DDIM config with
    ``timestep_scaling=4.0``, 4 steps at guidance 1. diffusers with peft (merge_and_unload) is the oracle."""
    import numpy as np
    from diffusers import LCMScheduler as RefLCM, TextToVideoSDPipeline as RefT2V
    from peft import LoraConfig, PeftModel, get_peft_model

    from lora_oracle import UNET_TARGETS, diffusers_unet
    torch.manual_seed(5)
    adapter = get_peft_model(diffusers_unet(tiny_pipeline_dir),
                             LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS, init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "modelscopet2v-laion")  # adapter_config.json + adapter_model.safetensors
    call = dict(num_frames=4, height=16, width=16, guidance_scale=1.0, num_inference_steps=4, output_type="np")

    ref = RefT2V.from_pretrained(tiny_pipeline_dir)
    ref.scheduler = RefLCM.from_pretrained(tiny_pipeline_dir, subfolder="scheduler", timestep_scaling=4.0)
    ref.unet = PeftModel.from_pretrained(ref.unet, tmp_path / "modelscopet2v-laion").merge_and_unload()
    ref.set_progress_bar_config(disable=True)
    theirs = ref("a red circle", generator=torch.Generator().manual_seed(2), **call).frames

    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.scheduler = LCMScheduler.from_pretrained(tiny_pipeline_dir, subfolder="scheduler", timestep_scaling=4.0)
    pipe.load_lora_weights(tmp_path / "modelscopet2v-laion")
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    ours = pipe("a red circle", generator=torch.Generator().manual_seed(2), **call).frames
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert calls == [1] * 4  # guidance 1: one UNet call per step
    plain = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    plain.scheduler = pipe.scheduler
    plain.set_progress_bar_config(disable=True)
    assert np.abs(plain("a red circle", generator=torch.Generator().manual_seed(2), **call).frames - ours).max() > 1e-3

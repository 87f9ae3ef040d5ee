"""End-to-end parity of our TextToVideoSDPipeline with diffusers', loaded from the same tiny folder."""
import numpy as np
import pytest
import torch

import videofusion
from videofusion import DPMSolverMultistepScheduler, TextToVideoSDPipeline

STEPS = 3


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir):
    from diffusers import TextToVideoSDPipeline as RefPipeline
    ref = RefPipeline.from_pretrained(tiny_pipeline_dir)
    ref.set_progress_bar_config(disable=True)
    ours = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def gen(seed=0):
    return torch.Generator("cpu").manual_seed(seed)


def assert_close(a, b, tol=1e-4):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol, np.abs(a - b).max()


CASES = {
    "default": dict(prompt="a red circle moving left"),
    "negative_prompt": dict(prompt="a red circle moving left", negative_prompt="blurry"),
    "no_guidance": dict(prompt="a red circle moving left", guidance_scale=1.0),
    "non_square": dict(prompt="a blue square", height=16, width=32),
    "8_frames": dict(prompt="a blue square", num_frames=8),
    "24_frames": dict(prompt="a blue square", num_frames=24),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_ddim(pipes, case):
    ref, ours = pipes
    kw = dict(CASES[case], num_inference_steps=STEPS)
    expected = ref(generator=gen(), **kw).frames
    got = ours(generator=gen(), **kw).frames
    assert got.shape == (1, kw.get("num_frames", 16), kw.get("height", 16), kw.get("width", 16), 3)
    assert_close(got, expected)


def test_parity_dpm_solver(pipes):
    from diffusers import DPMSolverMultistepScheduler as RefDPM
    ref, ours = pipes
    ref_sched, our_sched = ref.scheduler, ours.scheduler
    try:
        ref.scheduler = RefDPM.from_config(ref.scheduler.config)
        ours.scheduler = DPMSolverMultistepScheduler.from_config(ours.scheduler.config)
        expected = ref("a red circle", num_inference_steps=5, generator=gen()).frames
        got = ours("a red circle", num_inference_steps=5, generator=gen()).frames
    finally:
        ref.scheduler, ours.scheduler = ref_sched, our_sched
    assert_close(got, expected)


def test_parity_eta_with_generator(pipes):
    ref, ours = pipes
    expected = ref("a red circle", num_inference_steps=STEPS, eta=0.7, generator=gen(3)).frames
    got = ours("a red circle", num_inference_steps=STEPS, eta=0.7, generator=gen(3)).frames
    assert_close(got, expected)
    other = ours("a red circle", num_inference_steps=STEPS, eta=0.7, generator=gen(4)).frames
    assert np.abs(other - got).max() > 1e-3  # the eta noise really depends on the generator


def test_parity_given_latents(pipes):
    ref, ours = pipes
    latents = torch.randn(1, 4, 16, 8, 8, generator=gen(7))
    expected = ref("a red circle", num_inference_steps=STEPS, latents=latents.clone()).frames
    got = ours("a red circle", num_inference_steps=STEPS, latents=latents.clone()).frames
    assert_close(got, expected)


def test_parity_prompt_embeds(pipes):
    ref, ours = pipes
    embeds = torch.randn(1, 77, 16, generator=gen(1))
    negative = torch.randn(1, 77, 16, generator=gen(2))
    expected = ref(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=STEPS,
                   generator=gen()).frames
    got = ours(prompt_embeds=embeds, negative_prompt_embeds=negative, num_inference_steps=STEPS,
               generator=gen()).frames
    assert_close(got, expected)


def test_parity_two_prompts_two_videos_each(pipes):
    ref, ours = pipes
    # diffusers' call has no num_videos_per_prompt; repeating each prompt is the same batch
    expected = ref(["a red circle", "a red circle", "a blue square", "a blue square"],
                   num_inference_steps=STEPS, generator=gen()).frames
    got = ours(["a red circle", "a blue square"], num_videos_per_prompt=2, num_inference_steps=STEPS,
               generator=gen()).frames
    assert got.shape == (4, 16, 16, 16, 3)
    assert_close(got, expected)


def test_generator_list_makes_each_video_independent_of_the_batch(pipes):
    _, ours = pipes
    alone = ours("a red circle", num_inference_steps=2, eta=0.5, generator=[gen(11)]).frames
    batch = ours(["a blue square", "a red circle"], num_inference_steps=2, eta=0.5,
                 generator=[gen(10), gen(11)]).frames
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_decomposed_noise_changes_the_start_and_stays_deterministic(pipes):
    _, ours = pipes
    a = ours("a red circle", num_inference_steps=2, output_type="latent", generator=[gen(5)],
             noise="decomposed", noise_ratio=0.8).frames
    b = ours("a red circle", num_inference_steps=2, output_type="latent", generator=[gen(5)],
             noise="decomposed", noise_ratio=0.8).frames
    c = ours("a red circle", num_inference_steps=2, output_type="latent", generator=[gen(5)]).frames
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_output_types(pipes):
    _, ours = pipes
    kw = dict(prompt="a red circle", num_inference_steps=2, num_frames=4)
    np_frames = ours(generator=gen(), **kw).frames
    pt_frames = ours(generator=gen(), output_type="pt", **kw).frames
    pil_frames = ours(generator=gen(), output_type="pil", **kw).frames
    latents = ours(generator=gen(), output_type="latent", **kw).frames
    assert np_frames.shape == (1, 4, 16, 16, 3) and np_frames.dtype == np.float32
    assert 0.0 <= np_frames.min() and np_frames.max() <= 1.0
    assert pt_frames.shape == (1, 4, 3, 16, 16)
    np.testing.assert_allclose(pt_frames.permute(0, 1, 3, 4, 2).numpy(), np_frames, atol=1e-6)
    assert len(pil_frames) == 1 and len(pil_frames[0]) == 4 and pil_frames[0][0].size == (16, 16)
    assert latents.shape == (1, 4, 4, 8, 8)
    assert ours(generator=gen(), return_dict=False, **kw)[0].shape == np_frames.shape


def test_callback_and_progress_bar(pipes, capsys):
    _, ours = pipes
    seen = []
    ours.set_progress_bar_config(disable=False, desc="denoise")
    try:
        ours("a red circle", num_inference_steps=4, num_frames=2, callback=lambda i, t, x: seen.append((i, int(t))),
             callback_steps=2, generator=gen())
    finally:
        ours.set_progress_bar_config(disable=True)
    assert [i for i, _ in seen] == [0, 2]
    assert "4/4" in capsys.readouterr().err


def test_vae_slicing_and_attention_slicing_are_exact(pipes):
    _, ours = pipes
    kw = dict(prompt="a red circle", num_inference_steps=2, num_frames=4)
    plain = ours(generator=gen(), **kw).frames
    ours.enable_vae_slicing()
    ours.enable_attention_slicing(1)
    try:
        sliced = ours(generator=gen(), **kw).frames
    finally:
        ours.disable_vae_slicing()
        ours.disable_attention_slicing()
    np.testing.assert_allclose(sliced, plain, atol=1e-5)


def test_offload_without_accelerator_warns_and_still_runs(pipes):
    if torch.cuda.is_available():
        pytest.skip("this checks the no-accelerator behaviour")
    _, ours = pipes
    kw = dict(prompt="a red circle", num_inference_steps=2, num_frames=2)
    plain = ours(generator=gen(), **kw).frames
    for enable in (ours.enable_model_cpu_offload, ours.enable_sequential_cpu_offload):
        with pytest.warns(UserWarning, match="no accelerator"):
            enable()
        np.testing.assert_allclose(ours(generator=gen(), **kw).frames, plain, atol=1e-6)
    ours.disable_cpu_offload()


BAD_CALLS = [
    (dict(height=13), "height"),  # not divisible by the VAE's scale factor (2 here, 8 in the checkpoints)
    (dict(width=21), "width"),
    (dict(num_frames=0), "num_frames"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(prompt=None), "prompt"),
    (dict(prompt_embeds=torch.zeros(1, 77, 16)), "prompt"),
    (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt"),
    (dict(generator=[torch.Generator(), torch.Generator(), torch.Generator()]), "generator"),
    (dict(latents=torch.zeros(1, 4, 3, 8, 8)), "latents"),
    (dict(output_type="gif"), "output_type"),
    (dict(callback_steps=0), "callback_steps"),
    (dict(num_videos_per_prompt=0), "num_videos_per_prompt"),
    (dict(noise="pink"), "noise"),
    (dict(cross_attention_kwargs={"gligen": 0.5}), "cross_attention_kwargs"),
]


@pytest.mark.parametrize("kwargs,argument", BAD_CALLS, ids=[a for _, a in BAD_CALLS])
def test_bad_input_is_rejected_before_any_model_runs(pipes, monkeypatch, kwargs, argument):
    _, ours = pipes
    def boom(*a, **k):
        raise AssertionError("a model ran before the input was checked")
    monkeypatch.setattr(ours.unet, "forward", boom)
    monkeypatch.setattr(ours.text_encoder, "forward", boom)
    kwargs = {"prompt": "a red circle", **kwargs}
    with pytest.raises(ValueError, match=argument):
        ours(**kwargs)


def test_eta_with_a_scheduler_that_has_none_is_an_error(pipes):
    _, ours = pipes
    saved = ours.scheduler
    ours.scheduler = DPMSolverMultistepScheduler.from_config(saved.config)
    try:
        with pytest.raises(ValueError, match="eta"):
            ours("a red circle", eta=0.5)
    finally:
        ours.scheduler = saved


def test_save_pretrained_folder_loads_in_diffusers(pipes, tmp_path):
    from diffusers import TextToVideoSDPipeline as RefPipeline
    _, ours = pipes
    ours.save_pretrained(str(tmp_path / "saved"))
    ref = RefPipeline.from_pretrained(str(tmp_path / "saved"))
    ref.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, num_frames=4)
    assert_close(ours("a red circle", generator=gen(), **kw).frames,
                 ref("a red circle", generator=gen(), **kw).frames)
    again = videofusion.DiffusionPipeline.from_pretrained(str(tmp_path / "saved"))
    assert isinstance(again, TextToVideoSDPipeline)


def test_from_pretrained_replaces_components_and_rejects_unknown_keywords(tiny_pipeline_dir):
    sched = DPMSolverMultistepScheduler.from_pretrained(tiny_pipeline_dir, subfolder="scheduler")
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, scheduler=sched)
    assert pipe.scheduler is sched
    with pytest.raises(TypeError, match="unexpected"):
        TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, schedular=sched)
    with pytest.raises(TypeError, match="torch_dtype"):
        TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype="float16")


def test_torch_dtype_and_to(tiny_pipeline_dir):
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.text_encoder.dtype == torch.bfloat16
    pipe.to(torch.float32)
    assert pipe.dtype == torch.float32 and pipe.device.type == "cpu"
    assert set(pipe.components) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}


def test_variant_falls_back_to_plain_weights_per_component(tiny_pipeline_dir, tmp_path):
    import shutil
    folder = tmp_path / "mixed"
    shutil.copytree(tiny_pipeline_dir, folder)
    from videofusion.models import AutoencoderKL
    AutoencoderKL.from_pretrained(str(folder), subfolder="vae").save_pretrained(str(folder / "vae"), variant="fp16")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    pipe = TextToVideoSDPipeline.from_pretrained(str(folder), variant="fp16")  # only the VAE has fp16 files
    assert pipe.unet.dtype == torch.float32
    with pytest.raises(ValueError, match="fp32"):
        TextToVideoSDPipeline.from_pretrained(str(folder), variant="fp32")

"""VideoToVideoSDPipeline against diffusers' on the same tiny components, its video inputs, its errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from videofusion import DDIMScheduler, DiffusionPipeline, TextToVideoSDPipeline, VideoToVideoSDPipeline
from videofusion.io.frames import video_to_tensor

STEPS = 4


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir):
    from diffusers import TextToVideoSDPipeline as RefT2V
    from diffusers import VideoToVideoSDPipeline as RefV2V
    ref = RefV2V(**RefT2V.from_pretrained(tiny_pipeline_dir).components)
    ref.set_progress_bar_config(disable=True)
    ours = VideoToVideoSDPipeline(**TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir).components)
    ours.set_progress_bar_config(disable=True)
    return ref, ours


def input_video(frames=6, height=16, width=16, seed=3):
    return np.random.default_rng(seed).random((1, frames, height, width, 3), dtype=np.float32)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol, np.abs(a - b).max()


CASES = {
    "strength_0.3": dict(strength=0.3),
    "strength_0.6": dict(strength=0.6),
    "strength_1.0": dict(strength=1.0),
    "negative_prompt": dict(negative_prompt="blurry"),
    "guidance_1": dict(guidance_scale=1.0),
    "non_square": dict(video=input_video(4, 16, 32)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_diffusers(pipes, case):
    ref, ours = pipes
    kw = {"prompt": "a red circle", "video": input_video(), "num_inference_steps": STEPS, **CASES[case]}
    close(ours(generator=gen(), **kw).frames, ref(generator=gen(), **kw).frames)


def test_parity_eta_with_a_generator(pipes):
    ref, ours = pipes
    ours.scheduler, ref_scheduler = DDIMScheduler.from_config(ours.scheduler.config), ref.scheduler
    kw = dict(prompt="a red circle", video=input_video(), num_inference_steps=STEPS, eta=0.7)
    close(ours(generator=gen(1), **kw).frames, ref(generator=gen(1), **kw).frames)
    assert ref.scheduler is ref_scheduler


def test_prompt_embeds_and_every_output_type(pipes):
    ref, ours = pipes
    embeds = ours.encode_prompt("a blue square", torch.device("cpu"), 1, False)[0]
    kw = dict(prompt_embeds=embeds, video=input_video(), num_inference_steps=STEPS, guidance_scale=1.0)
    for output_type in ("np", "pt", "latent"):
        mine = ours(generator=gen(), output_type=output_type, **kw).frames
        theirs = ref(generator=gen(), output_type=output_type, **kw).frames
        close(mine if output_type == "np" else mine.numpy(), theirs if output_type == "np" else theirs.numpy())
    mine = ours(generator=gen(), output_type="pil", **kw).frames
    theirs = ref(generator=gen(), output_type="pil", **kw).frames
    assert len(mine) == len(theirs) == 1 and len(mine[0]) == 6
    assert max(np.abs(np.asarray(a, int) - np.asarray(b, int)).max() for a, b in zip(mine[0], theirs[0])) <= 1


def test_a_list_of_generators_gives_each_video_its_own_generators_video(pipes):
    """One generator per video: video i is what diffusers makes for prompt i with generator i alone."""
    ref, ours = pipes
    prompts = ["a red circle", "a blue square"]
    both = ours(prompts, video=input_video(), generator=[gen(5), gen(6)], num_inference_steps=STEPS).frames
    for i, prompt in enumerate(prompts):
        alone = ref(prompt, video=input_video(), generator=gen(5 + i), num_inference_steps=STEPS).frames[0]
        close(both[i], alone)


def test_the_text_to_video_output_goes_in_as_is_in_every_form(pipes, tmp_path):
    _, ours = pipes
    t2v = TextToVideoSDPipeline(**ours.components)
    made = {kind: t2v("a red circle", num_frames=4, num_inference_steps=2, generator=gen(), output_type=kind).frames
            for kind in ("np", "pt", "pil")}
    expected = video_to_tensor(made["np"])
    assert expected.shape == (1, 3, 4, 16, 16) and -1 <= expected.min() and expected.max() <= 1
    torch.testing.assert_close(video_to_tensor(made["pt"]), expected)
    torch.testing.assert_close(video_to_tensor(made["pil"]), expected, atol=1 / 255, rtol=0)  # uint8 rounding
    uint8 = (made["np"][0] * 255).round().astype(np.uint8)
    torch.testing.assert_close(video_to_tensor(uint8), video_to_tensor(list(uint8)))
    torch.testing.assert_close(video_to_tensor(uint8), expected, atol=1 / 255, rtol=0)
    from videofusion import export_to_gif
    gif = export_to_gif(made["np"][0], str(tmp_path / "in.gif"), fps=4)
    assert video_to_tensor(gif).shape == (1, 3, 4, 16, 16)
    out = ours("a blue circle", video=gif, num_inference_steps=2, strength=0.5, generator=gen()).frames
    assert out.shape == (1, 4, 16, 16, 3)


def test_height_and_width_resize_the_input(pipes):
    _, ours = pipes
    big = ours("a red circle", video=input_video(3, 16, 16), height=32, width=48, num_inference_steps=2,
               generator=gen()).frames
    assert big.shape == (1, 3, 32, 48, 3)
    assert video_to_tensor(input_video(3), 32, 48).shape == (1, 3, 3, 32, 48)


@pytest.mark.parametrize("kwargs,word", [
    (dict(strength=0.0), "strength"), (dict(strength=1.5), "strength"),
    (dict(strength=0.1, num_inference_steps=4), "strength"),  # int(4 * 0.1) = 0 steps would run
    (dict(video=[]), "video"), (dict(video=None), "video"),
    (dict(video=[np.zeros((16, 16, 3)), np.zeros((8, 8, 3))]), "video"),
    (dict(video=input_video(3, 15, 16)), "height"),  # not divisible by the VAE's scale factor (2 here)
    (dict(video=input_video(3), height=31, width=32), "height"),
    (dict(video=input_video(3), height=32), "width"),
    (dict(video="/no/such/file.mp4"), "file"),
])
def test_bad_input_is_refused_before_any_model_runs(pipes, monkeypatch, kwargs, word):
    _, ours = pipes

    def boom(*a, **k):
        raise AssertionError("a model ran before the input was checked")
    monkeypatch.setattr(ours.unet, "forward", boom)
    monkeypatch.setattr(ours.vae, "forward", boom)
    monkeypatch.setattr(ours.text_encoder, "forward", boom)
    with pytest.raises((ValueError, FileNotFoundError), match=word):
        ours("a red circle", **{"video": input_video(3), "num_inference_steps": 4, **kwargs})


def test_diffusion_pipeline_opens_a_video_to_video_folder(pipes, tmp_path):
    _, ours = pipes
    ours.save_pretrained(str(tmp_path / "v2v"))
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "v2v"))
    assert type(loaded) is VideoToVideoSDPipeline
    from diffusers import DiffusionPipeline as RefPipeline
    assert type(RefPipeline.from_pretrained(str(tmp_path / "v2v"))).__name__ == "VideoToVideoSDPipeline"


def test_pil_frames_of_one_video(pipes):
    _, ours = pipes
    frames = [Image.fromarray((np.full((16, 16, 3), 40 * i)).astype(np.uint8)) for i in range(3)]
    out = ours("a red circle", video=frames, num_inference_steps=2, generator=gen()).frames
    assert out.shape == (1, 3, 16, 16, 3)


def test_the_memory_options_of_text_to_video_work_here(tiny_pipeline_dir):
    pipe = VideoToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(prompt="a red circle", video=input_video(5, 32, 32), num_inference_steps=4)
    plain = pipe(generator=gen(), **kw).frames
    pipe.enable_vae_slicing(2)  # encoding and decoding 2 frames at a time
    pipe.enable_frame_chunking(2)
    np.testing.assert_allclose(pipe(generator=gen(), **kw).frames, plain, atol=1e-5)
    pipe.enable_model_cpu_offload(device="cpu")
    np.testing.assert_allclose(pipe(generator=gen(), **kw).frames, plain, atol=1e-5)
    pipe.disable_cpu_offload()
    pipe.enable_vae_tiling()  # large frames: encoded and decoded in blended tiles (not exact at the seams)
    pipe.vae.tile_sample_min_size, pipe.vae.tile_latent_min_size = 16, 8
    tiled = pipe(generator=gen(), **kw).frames
    assert tiled.shape == plain.shape and np.abs(tiled - plain).mean() < 0.1


def test_on_the_demo_model_a_red_circle_re_prompted_blue_comes_out_blue_and_still_moving_left():
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.demo.evaluation import score_clip
    t2v = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=torch.float32)
    t2v.set_progress_bar_config(disable=True)
    source = t2v("a red circle moving left", generator=gen(1)).frames
    assert score_clip(source[0], "a red circle moving left")["predicted"]["colour"] == "red"
    v2v = VideoToVideoSDPipeline(**t2v.components)
    target = "a blue circle moving left"
    kept = v2v(target, video=source, strength=0.8, generator=gen(1)).frames  # the strength the docs recommend
    read = score_clip(kept[0], target)["predicted"]
    assert (read["colour"], read["direction"]) == ("blue", "left"), read
    light = v2v(target, video=source, strength=0.3, generator=gen(1)).frames  # too little noise: still red
    assert score_clip(light[0], target)["predicted"]["colour"] == "red"

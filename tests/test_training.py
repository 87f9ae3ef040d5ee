"""Training: resume gives the same weights, decomposed noise statistics, datasets, tokenizer, plots."""
import json

import numpy as np
import pytest
import torch
from helpers import unet_state

from videofusion.noise import initial_latents
from videofusion.training.train import TrainConfig, sample_timesteps, save_loss_curve, train


def config(tiny_pipeline_dir, out, **kw):
    base = dict(model=tiny_pipeline_dir, output_dir=str(out), data={"shapes": 6, "seed": 0}, num_frames=4,
                height=16, width=16, steps=4, batch_size=2, learning_rate=1e-3, train_text_encoder=True,
                ema_decay=0.9, checkpoint_every=2, noise_ratio=0.5, seed=3)
    return TrainConfig(**{**base, **kw})



def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    straight = train(config(tiny_pipeline_dir, tmp_path / "straight"), progress=False)
    train(config(tiny_pipeline_dir, tmp_path / "resumed", steps=2), progress=False)
    resumed = train(config(tiny_pipeline_dir, tmp_path / "resumed"), progress=False)
    a, b = unet_state(tmp_path / "straight" / "model"), unet_state(tmp_path / "resumed" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss_avg50"] == straight["final_loss_avg50"]
    start = unet_state(tiny_pipeline_dir)
    assert not all(torch.equal(a[k], start[k]) for k in a)  # training changed the weights
    log = json.loads((tmp_path / "resumed" / "log.json").read_text())
    assert log["steps"] == 4
    assert (tmp_path / "resumed" / "loss.png").stat().st_size > 0
    assert not list((tmp_path / "resumed").glob(".*tmp*"))  # atomic writes leave no temp files


def test_training_lowers_the_loss_on_a_fixed_batch(tiny_pipeline_dir, tmp_path):
    summary = train(config(tiny_pipeline_dir, tmp_path / "t", data={"shapes": 1, "seed": 0}, steps=30,
                           batch_size=1, ema_decay=None, checkpoint_every=30, noise_ratio=0.0,
                           train_text_encoder=False, learning_rate=3e-3), progress=False)
    state = torch.load(tmp_path / "t" / "checkpoint.pt", weights_only=True)
    first, last = np.mean(state["losses"][:10]), np.mean(state["losses"][-10:])
    assert last < first, (first, last)
    assert summary["steps"] == 30


def test_decomposed_noise_has_unit_variance_and_frame_correlation_lambda():
    for ratio in (0.0, 0.3, 0.8):
        x = initial_latents((64, 4, 8, 16, 16), torch.Generator().manual_seed(0), noise="decomposed", noise_ratio=ratio)
        assert abs(x.std().item() - 1.0) < 0.02
        a, b = x[:, :, 0].flatten(), x[:, :, 5].flatten()
        corr = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(corr - ratio) < 0.03, (ratio, corr)


def test_decomposed_noise_depends_only_on_each_videos_generator():
    shape = (3, 4, 5, 6, 6)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]
    batch = initial_latents(shape, gens([1, 2, 3]), noise="decomposed", noise_ratio=0.5)
    alone = initial_latents((1, *shape[1:]), gens([2]), noise="decomposed", noise_ratio=0.5)
    assert torch.equal(batch[1:2], alone)
    with pytest.raises(ValueError, match="noise_ratio"):
        initial_latents(shape, None, noise="decomposed", noise_ratio=1.5)
    with pytest.raises(ValueError, match="noise"):
        initial_latents(shape, None, noise="pink")


def test_video_folder_and_manifest_datasets(tmp_path):
    from videofusion.training.data import VideoCaptionDataset, captions_of
    from videofusion.demo.shapes import make_dataset
    make_dataset(tmp_path / "clips", n=3, seed=0, num_frames=6, height=32, width=48)
    folder = VideoCaptionDataset(tmp_path / "clips", num_frames=4, height=16, width=16)
    assert len(folder) == 3
    item = folder[0]
    assert item["video"].shape == (3, 4, 16, 16) and -1 <= item["video"].min() and item["video"].max() <= 1
    assert item["caption"].startswith("a ") and "moving" in item["caption"]
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps({"video": f"clips/{i:06d}.mp4", "caption": f"clip {i}"}) + "\n"
                                for i in range(3)))
    listed = VideoCaptionDataset(manifest, num_frames=4, height=16, width=16)
    assert captions_of(listed) == ["clip 0", "clip 1", "clip 2"]
    torch.testing.assert_close(listed[1]["video"], folder[1]["video"])
    with pytest.raises(ValueError, match="fewer than num_frames"):
        VideoCaptionDataset(tmp_path / "clips", num_frames=20, height=16, width=16)[0]
    (tmp_path / "clips" / "000001.txt").unlink()
    with pytest.raises(ValueError, match="caption"):
        VideoCaptionDataset(tmp_path / "clips")
    manifest.write_text('{"video": "nope.mp4", "caption": "x"}\n')
    with pytest.raises(ValueError, match="line 1"):
        VideoCaptionDataset(manifest)


def test_learned_tokenizer_gives_one_token_per_word(tmp_path):
    from videofusion.demo.tokenizer import build_clip_tokenizer
    tok = build_clip_tokenizer(["a", "red", "green", "circle", "moving", "left"], tmp_path, model_max_length=16)
    ids = tok("a red circle moving left").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "red</w>", "circle</w>", "moving</w>",
                                              "left</w>", "<|endoftext|>"]
    assert len(tok("a purple giraffe").input_ids) > 4  # unknown words fall back to byte characters


def test_unet_from_starts_from_another_folders_unet_with_this_folders_text_encoder(tiny_pipeline_dir, tmp_path):
    from videofusion.models import UNet3DConditionModel
    from videofusion.training.train import _load_unet_weights
    train(config(tiny_pipeline_dir, tmp_path / "stage1", steps=2), progress=False)
    stage1 = tmp_path / "stage1" / "model"
    fresh = UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet")
    _load_unet_weights(fresh, str(stage1))
    a, b = fresh.state_dict(), unet_state(stage1)
    assert all(torch.equal(a[k], b[k]) for k in a)

    train(config(tiny_pipeline_dir, tmp_path / "stage2", steps=2, unet_from=str(stage1),
                 train_text_encoder=False), progress=False)
    from transformers import CLIPTextModel
    te_start = CLIPTextModel.from_pretrained(tiny_pipeline_dir, subfolder="text_encoder").state_dict()
    te_out = CLIPTextModel.from_pretrained(tmp_path / "stage2" / "model", subfolder="text_encoder").state_dict()
    assert all(torch.equal(te_start[k], te_out[k]) for k in te_start)  # frozen, from `model`, not unet_from
    out = unet_state(tmp_path / "stage2" / "model")
    assert not all(torch.equal(out[k], b[k]) for k in b)  # trained on from stage 1's weights

    with pytest.raises(FileNotFoundError, match="unet_from"):
        _load_unet_weights(fresh, str(tmp_path))
    other = tmp_path / "other"
    UNet3DConditionModel(**{**fresh.config.__dict__, "layers_per_block": fresh.config.layers_per_block + 1}).save_pretrained(
        str(other / "unet"))
    with pytest.raises(ValueError, match="unet_from.*layers_per_block"):
        _load_unet_weights(fresh, str(other))


def test_timestep_power_favours_high_noise_and_power_1_is_the_uniform_draw():
    uniform = sample_timesteps(8, 1000, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(uniform, torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(5)))
    t = sample_timesteps(20000, 1000, 2.0, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.int64
    assert abs((t >= 850).double().mean().item() - (1 - 0.85) ** 0.5) < 0.01  # P(t >= 0.85 T) = sqrt(0.15)
    with pytest.raises(ValueError, match="timestep_power"):
        TrainConfig(model="m", output_dir="o", data="d", timestep_power=0)


def test_config_validation_and_files(tmp_path):
    with pytest.raises(ValueError, match="noise_ratio"):
        TrainConfig(model="m", output_dir="o", data="d", noise_ratio=2)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(model="m", output_dir="o", data="d", mixed_precision="fp8")
    with pytest.raises(ValueError, match="height"):
        TrainConfig(model="m", output_dir="o", data="d", height=0)
    path = tmp_path / "c.toml"
    path.write_text('model = "m"\noutput_dir = "o"\ndata = { shapes = 4 }\nsteps = 7\n')
    assert TrainConfig.from_file(path).steps == 7
    assert TrainConfig.from_file(path, steps=9).steps == 9
    path.write_text('model = "m"\noutput_dir = "o"\ndata = "d"\nstpes = 7\n')
    with pytest.raises(ValueError, match="stpes"):
        TrainConfig.from_file(path)


def test_training_size_defaults_to_the_models_and_a_missing_model_says_what_makes_it(tiny_pipeline_dir, tmp_path,
                                                                                     monkeypatch):
    from videofusion.training.train import resolve_model
    from videofusion.pipelines.folders import native_geometry
    native, scale = native_geometry(tiny_pipeline_dir)
    _, config = resolve_model(TrainConfig(model=tiny_pipeline_dir, output_dir="o", data="d"))
    assert (config.height, config.width) == (native, native)  # not a fixed 256
    assert resolve_model(TrainConfig(model=tiny_pipeline_dir, output_dir="o", data="d", width=2 * native))[1].width \
        == 2 * native
    with pytest.raises(ValueError, match=f"height: must be divisible by {scale}"):
        resolve_model(TrainConfig(model=tiny_pipeline_dir, output_dir="o", data="d", height=scale * 4 + 1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="videofusion init-demo") as error:
        resolve_model(TrainConfig(model="out/demo-init", output_dir="o", data="d"))
    assert "no folder 'out/demo-init' here" in str(error.value)


def test_loss_curve_png_has_labelled_log_axes_and_a_smoothed_curve(tmp_path):
    import numpy as np
    from PIL import Image

    from videofusion.training.plot import BOTTOM, LEFT, SMOOTH, log_ticks, moving_average, step_ticks
    assert log_ticks(0.06, 2.05) == [0.1, 0.2, 0.5, 1.0, 2.0]  # 1-2-5 within three decades
    assert log_ticks(1e-4, 3.0) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # powers of ten beyond
    assert step_ticks(1999) == [0, 500, 1000, 1500] and step_ticks(7) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert moving_average([1, 3, 5, 7], 2) == [1, 2, 4, 6]
    save_loss_curve([1.0 / (i + 1) for i in range(100)], tmp_path / "loss.png")
    pixels = np.asarray(Image.open(tmp_path / "loss.png").convert("RGB")).astype(int)
    h = pixels.shape[0]
    ink = (pixels.sum(-1) < 200)
    assert ink[:, : LEFT - 8].any() and ink[h - BOTTOM + 6:, LEFT:].any()  # tick labels left of and below the plot
    assert (np.abs(pixels - np.array(SMOOTH)).sum(-1) == 0).sum() > 100  # the smoothed curve is drawn


def test_autoencoder_training_and_scaling_factor():
    from helpers import TINY_VAE
    from videofusion.models import AutoencoderKL
    from videofusion.demo.autoencoder import fit_scaling_factor, train_autoencoder
    from videofusion.demo.shapes import ShapesDataset
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE)
    data = ShapesDataset(4, seed=0, num_frames=4, height=16, width=16)
    losses = train_autoencoder(vae, data, steps=12, clips_per_step=2, frames_per_clip=2, learning_rate=3e-3,
                               progress=False)
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    assert fit_scaling_factor(vae, data, num_clips=4) > 0
    # the shape's pixels weighted 10x: a different loss from the same seeded draws
    torch.manual_seed(0)
    weighted = train_autoencoder(AutoencoderKL(**TINY_VAE), data, steps=2, clips_per_step=2, frames_per_clip=2,
                                 progress=False, foreground_weight=10.0)
    assert weighted[0] != pytest.approx(losses[0], rel=1e-3)
    with pytest.raises(ValueError, match="foreground_weight"):
        train_autoencoder(vae, data, steps=1, foreground_weight=0.5)


def test_decoder_only_training_on_any_colour_clips_keeps_the_encoder_bit_for_bit():
    import colorsys
    from helpers import TINY_VAE
    from videofusion.models import AutoencoderKL
    from videofusion.demo.autoencoder import AnyColourClips, train_autoencoder
    from videofusion.demo.shapes import COLOURS, ShapesDataset
    data = ShapesDataset(200, seed=0, num_frames=4, height=16, width=16)
    clips = AnyColourClips(data, share=0.5, seed=0)
    new = [clips.colour(i) for i in range(len(data))]
    assert 70 <= sum(c is not None for c in new) <= 130  # about half repainted
    assert new == [AnyColourClips(data, share=0.5, seed=0).colour(i) for i in range(len(data))]  # from the seed
    hues = [colorsys.rgb_to_hsv(*(v / 255 for v in c))[0] for c in new if c is not None]
    assert len({int(h * 6) for h in hues}) == 6  # every sixth of the hue circle
    i = next(i for i, c in enumerate(new) if c is not None)
    pixels = ((clips[i]["video"] + 1) * 127.5).round().reshape(3, -1).T.numpy()
    assert (np.abs(pixels - np.array(new[i])).max(axis=1) <= 1).any()  # the shape has the new colour
    assert not any((np.abs(pixels - np.array(c)).max(axis=1) <= 1).any() for c in COLOURS.values())
    j = next(i for i, c in enumerate(new) if c is None)
    assert torch.equal(clips[j]["video"], data[j]["video"])  # the others as they were
    torch.manual_seed(0)
    vae = AutoencoderKL(**TINY_VAE)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    losses = train_autoencoder(vae, clips, steps=3, clips_per_step=2, frames_per_clip=2, learning_rate=3e-3,
                               progress=False, decoder_only=True)
    assert len(losses) == 3
    after = vae.state_dict()
    trained = {k for k in before if k.startswith(("decoder.", "post_quant_conv."))}
    assert all(torch.equal(after[k], before[k]) for k in before if k not in trained)  # encoder and quant_conv
    assert all(not torch.equal(after[k], before[k]) for k in trained if k.endswith("weight"))
    with pytest.raises(ValueError, match="decoder_only"):
        train_autoencoder(vae, clips, steps=1, decoder_only=True, anchor=(8, torch.zeros(3), torch.eye(3)))
    with pytest.raises(ValueError, match="share"):
        AnyColourClips(data, share=1.5)


def test_colour_anchored_autoencoder_whitens_cell_colours_and_rescales_free_channels():
    from helpers import TINY_VAE
    from videofusion.models import AutoencoderKL
    from videofusion.demo.autoencoder import (anchor_target, colour_whitening, scale_free_channels,
                                                  train_autoencoder)
    from videofusion.demo.shapes import ShapesDataset
    data = ShapesDataset(8, seed=0, num_frames=4, height=16, width=16)
    factor = 2 ** (len(TINY_VAE["block_out_channels"]) - 1)
    mean, matrix = colour_whitening(data, factor, num_clips=32)
    frames = torch.stack([data[i]["video"] for i in range(8)]).permute(0, 2, 1, 3, 4).flatten(0, 1)  # (n, 3, h, w)
    target = anchor_target(frames, (factor, mean, matrix))  # (n, 3, h', w')
    assert target.shape == (32, 3, 16 // factor, 16 // factor)
    assert torch.allclose(matrix, matrix.T)  # ZCA: symmetric
    covariance = torch.cov(target.permute(1, 0, 2, 3).reshape(3, -1))
    assert torch.allclose(covariance, torch.eye(3), atol=0.35)  # whitened (estimated on other draws)
    # a plain frame's colour is its cell colour: the target is the whitened background colour everywhere
    plain = torch.full((1, 3, 16, 16), 0.5)
    expected = matrix @ (torch.full((3,), 0.5) - mean)
    assert torch.allclose(anchor_target(plain, (factor, mean, matrix))[0, :, 0, 0], expected, atol=1e-6)

    torch.manual_seed(0)
    vae = AutoencoderKL(**{**TINY_VAE, "latent_channels": 4})
    anchored = train_autoencoder(vae, data, steps=30, clips_per_step=2, frames_per_clip=2, learning_rate=3e-3,
                                 progress=False, anchor=(factor, mean, matrix), anchor_weight=10.0)
    with torch.no_grad():
        before = vae.encode(frames).latent_dist.mode()
        error = (before[:, :3] - target).pow(2).mean() / target.pow(2).mean()
    assert error < 0.5  # the first three channels learned the whitened colours
    assert np.mean(anchored[-5:]) < np.mean(anchored[:5])
    with torch.no_grad():
        image = vae.decode(before).sample
        (scale,) = scale_free_channels(vae, data, std=0.5, num_clips=8)
        after = vae.encode(frames).latent_dist.mode()
        assert torch.allclose(after[:, :3], before[:, :3], atol=1e-5)  # anchored channels untouched
        assert torch.allclose(after[:, 3], scale * before[:, 3], atol=1e-5)
        assert torch.allclose(vae.decode(after).sample, image, atol=1e-4)  # exact: the decoder undoes it
    with pytest.raises(ValueError, match="latent_channels"):
        train_autoencoder(AutoencoderKL(**{**TINY_VAE, "latent_channels": 2}), data, steps=1,
                          anchor=(factor, mean, matrix))


def test_init_demo_writes_a_pipeline_folder_and_scales_the_token_embeddings(tmp_path):
    from videofusion import TextToVideoSDPipeline
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.demo.recipe import init_demo_pipeline
    plain = init_demo_pipeline(tmp_path / "plain", vae_from=DEMO_MODEL_PATH, progress=False, token_embedding_scale=1)
    words = init_demo_pipeline(tmp_path / "words", vae_from=DEMO_MODEL_PATH, progress=False)  # the default: 50
    a, b = (TextToVideoSDPipeline.from_pretrained(str(p)) for p in (plain, words))
    ea, eb = (p.text_encoder.get_input_embeddings().weight for p in (a, b))
    assert torch.allclose(eb, 50 * ea)  # the same seeded draw, scaled
    torch.testing.assert_close(a.vae.state_dict(), b.vae.state_dict())  # the reused VAE
    ids = b.tokenizer(["a red circle moving left", "a red circle moving right"], padding="max_length",
                      max_length=b.tokenizer.model_max_length, return_tensors="pt").input_ids
    position = int((ids[0] != ids[1]).nonzero()[0])  # where the direction word sits
    with torch.no_grad():
        gaps = [(h[0, position] - h[1, position]).norm() / h[0, position].norm()
                for h in (a.text_encoder(ids)[0], b.text_encoder(ids)[0])]
    assert gaps[1] > 1.0 > 0.5 > gaps[0]  # scaled: the two words come out nearly orthogonal
    with pytest.raises(ValueError, match="token_embedding_scale"):
        init_demo_pipeline(tmp_path / "bad", vae_from=DEMO_MODEL_PATH, token_embedding_scale=0)
    with pytest.raises(ValueError, match="decoder_steps"):
        init_demo_pipeline(tmp_path / "bad", vae_from=DEMO_MODEL_PATH, decoder_steps=-1)
    assert not (tmp_path / "bad").exists()  # rejected before anything is written


def test_init_demo_interrupted_leaves_the_old_folder(tmp_path, monkeypatch):
    from videofusion import TextToVideoSDPipeline
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.demo.recipe import init_demo_pipeline
    out = init_demo_pipeline(tmp_path / "init", vae_from=DEMO_MODEL_PATH, progress=False)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    save = TextToVideoSDPipeline.save_pretrained

    def interrupted(self, folder, **kwargs):  # the text encoder and UNet written, then Ctrl-C
        save(self, folder, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(TextToVideoSDPipeline, "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        init_demo_pipeline(out, vae_from=DEMO_MODEL_PATH, progress=False, broadcast_caption=True)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["init"]  # no temporary folder left


def test_broadcast_caption_puts_every_word_into_the_padding_positions(tmp_path):
    from videofusion import TextToVideoSDPipeline
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.demo.recipe import init_demo_pipeline
    plain = init_demo_pipeline(tmp_path / "plain", vae_from=DEMO_MODEL_PATH, progress=False, broadcast_caption=False)
    spread = init_demo_pipeline(tmp_path / "spread", vae_from=DEMO_MODEL_PATH, progress=False, broadcast_caption=True)
    a, b = (TextToVideoSDPipeline.from_pretrained(str(p)) for p in (plain, spread))
    pad = b.tokenizer.pad_token_id
    assert float(b.text_encoder.get_input_embeddings().weight[pad].detach().abs().max()) == 0.0
    captions = ["a red circle moving left", "a red circle moving up", "a blue circle moving left",
                "a red square moving left"]
    ids = b.tokenizer(captions, padding="max_length", max_length=b.tokenizer.model_max_length,
                      return_tensors="pt").input_ids
    first_pad = int((ids[0] == pad).nonzero()[0])
    with torch.no_grad():
        for name, pipe in (("plain", a), ("spread", b)):
            h = pipe.text_encoder(ids)[0][:, first_pad:]  # (4, padding positions, dim)
            gaps = [float(((h[i] - h[0]).norm(dim=-1) / h[0].norm(dim=-1)).min()) for i in (1, 2, 3)]
            if name == "plain":
                assert min(gaps) < 0.15  # a random x50 encoder barely leaks a word past its position
            else:
                assert min(gaps) > 0.25, gaps  # direction, colour and shape all reach every padding position
        torch.testing.assert_close(a.unet.state_dict(), b.unet.state_dict())  # only the text encoder differs


def test_init_demo_defaults_to_colour_anchored_8x8_latents(tmp_path):
    from videofusion import TextToVideoSDPipeline
    from videofusion.demo import DEMO_MODEL_PATH
    from videofusion.demo.recipe import FREE_CHANNEL_STD, init_demo_pipeline
    out = init_demo_pipeline(tmp_path / "d8", vae_steps=2, progress=False, decoder_steps=2)  # the shipped recipe
    pipe = TextToVideoSDPipeline.from_pretrained(str(out))
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 8
    assert pipe.vae.config.scaling_factor == 1.0  # anchored latents are whitened already
    with torch.no_grad():
        z = pipe.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert z.shape == (1, 4, 8, 8)
    # the free channel is rescaled to FREE_CHANNEL_STD over the clips (frames of seed-1 clips, as init-demo draws)
    from videofusion.demo.autoencoder import _frames
    from videofusion.demo.shapes import ShapesDataset
    frames = _frames(ShapesDataset(2000, seed=1), list(range(32)), 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        free = pipe.vae.encode(frames).latent_dist.mode()[:, 3]
    assert abs(float(free.std()) - FREE_CHANNEL_STD) < 0.25 * FREE_CHANNEL_STD
    plain = init_demo_pipeline(tmp_path / "d4", vae_steps=2, progress=False, vae_downsample=4, anchor_colours=False,
                               decoder_steps=0)
    assert TextToVideoSDPipeline.from_pretrained(str(plain)).unet.config.sample_size == 16
    with pytest.raises(ValueError, match="vae_downsample"):
        init_demo_pipeline(tmp_path / "bad", vae_from=DEMO_MODEL_PATH, vae_downsample=2)
    with pytest.raises(ValueError, match="vae_from"):  # the shipped 8x VAE does not fit the 4x recipe
        init_demo_pipeline(tmp_path / "bad", vae_from=DEMO_MODEL_PATH, vae_downsample=4)
    assert not (tmp_path / "bad").exists()  # rejected before anything is written


def test_foreground_coverage_is_the_shapes_share_of_each_latent_pixel():
    from videofusion.demo.shapes import ShapeSpec, coverage, render_clip, trajectory
    from videofusion.training.train import foreground_coverage
    spec = ShapeSpec("red", "square", "right", size="large")
    clip = torch.from_numpy(render_clip(spec, 4, 32, 32)).permute(3, 0, 1, 2).float()[None] / 127.5 - 1
    cover = foreground_coverage(clip, (4, 4))  # (1, 1, 4, 4, 4)
    assert cover.shape == (1, 1, 4, 4, 4) and 0 <= cover.min() and cover.max() <= 1
    for f, (cx, cy) in enumerate(trajectory(spec, 4, 32, 32)):
        area = coverage("square", cx, cy, 0.36 * 32, 32, 32)
        masked = cover[0, 0, f].sum().item() * 64  # 8x8 pixels per latent cell
        assert area.sum() <= masked <= 1.3 * area.sum()  # antialiased edge pixels count whole
    assert cover[0, 0, 0, :, 3].max() == 0  # the square starts on the left: the right column is background


def test_foreground_weight_changes_the_loss_and_resumes_exactly(tiny_pipeline_dir, tmp_path):
    kw = dict(foreground_weight=10.0, cache_latents=True)
    straight = train(config(tiny_pipeline_dir, tmp_path / "straight", **kw), progress=False)
    train(config(tiny_pipeline_dir, tmp_path / "resumed", steps=2, **kw), progress=False)
    resumed = train(config(tiny_pipeline_dir, tmp_path / "resumed", **kw), progress=False)
    a, b = unet_state(tmp_path / "straight" / "model"), unet_state(tmp_path / "resumed" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = train(config(tiny_pipeline_dir, tmp_path / "plain", steps=1, cache_latents=True), progress=False)
    weighted = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["losses"][0]
    assert weighted != pytest.approx(plain["final_loss_avg50"], rel=1e-3)  # same batch, other weights
    assert resumed["final_loss_avg50"] == straight["final_loss_avg50"]
    with pytest.raises(ValueError, match="foreground_weight"):
        TrainConfig(model="m", output_dir="o", data="d", foreground_weight=0.5)


def test_weighted_mse_splits_the_error_into_static_and_temporal_parts():
    from videofusion.training.train import weighted_mse
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 6, 3, 3, generator=g), torch.randn(2, 4, 6, 3, 3, generator=g)
    plain = torch.nn.functional.mse_loss(pred, target)
    assert torch.allclose(weighted_mse(pred, target, 1.0, torch.ones(2, 1, 6, 3, 3)), plain)  # orthogonal parts
    static = target + torch.randn(2, 4, 1, 3, 3, generator=g)  # an error constant over the frames
    assert torch.allclose(weighted_mse(static, target, 5.0), weighted_mse(static, target, 1.0))
    moving = target + torch.randn(2, 4, 6, 3, 3, generator=g)
    moving = moving - (moving - target).mean(2, keepdim=True)  # an error with no static part
    assert torch.allclose(weighted_mse(moving, target, 5.0), 5 * weighted_mse(moving, target, 1.0))
    weight = torch.ones(2, 1, 6, 3, 3)
    weight[0] = 3.0  # the first clip's elements count three times the second's; scaled to mean 1
    each = ((pred - target) ** 2).mean(dim=(1, 2, 3, 4))
    assert torch.allclose(weighted_mse(pred, target, 1.0, weight), (1.5 * each[0] + 0.5 * each[1]) / 2)
    with pytest.raises(ValueError, match="temporal_weight"):
        TrainConfig(model="m", output_dir="o", data="d", temporal_weight=0)


def test_every_shipped_training_config_parses():
    from pathlib import Path
    from videofusion.training.distill import DistillConfig
    from videofusion.training.train import TrainConfig
    folder = Path(__file__).resolve().parents[1] / "configs"
    assert (folder / "demo-broadcast.toml").is_file() and (folder / "distill-demo.toml").is_file()
    for path in sorted(folder.glob("*.toml")):
        kind = DistillConfig if path.name.startswith("distill") else TrainConfig  # `videofusion distill` configs
        config = kind.from_file(path)
        assert config.steps >= 1 and config.output_dir, path.name
    stage2 = TrainConfig.from_file(folder / "demo-broadcast.toml")
    assert stage2.unet_from == "out/demo-standard/model" and not stage2.train_text_encoder

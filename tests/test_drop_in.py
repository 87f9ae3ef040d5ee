"""What scripts written against diffusers 0.42.1 call, checked against diffusers itself on tiny models:
outputs read both ways, configs as mappings, save_config / load_config, loading options (variants in every
situation, torch_dtype per component, low_cpu_mem_usage), FreeU, fused projections, the xformers switch."""
import logging
import shutil
import warnings

import numpy as np
import pytest
import torch

from helpers import TINY_UNET, TINY_VAE, make_diffusers_pipeline_folder

import videofusion
from videofusion import AutoencoderKL, DiffusionPipeline, TextToVideoSDPipeline, UNet3DConditionModel


@pytest.fixture(scope="module")
def unets():
    import diffusers
    torch.manual_seed(0)
    ref = diffusers.UNet3DConditionModel(**TINY_UNET).eval()
    ours = UNet3DConditionModel(**TINY_UNET).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def unet_inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 3, 8, 8, generator=g), torch.tensor([10, 500]), torch.randn(2, 5, 16, generator=g)


@torch.no_grad()
def test_outputs_read_by_index_and_by_key_as_in_diffusers(unets):
    ref, ours = unets
    x, t, ctx = unet_inputs()
    theirs, mine = ref(x, t, ctx), ours(x, t, ctx)
    assert list(mine.keys()) == list(theirs.keys()) == ["sample"] and len(mine) == len(theirs) == 1
    torch.testing.assert_close(mine[0], theirs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mine["sample"], theirs["sample"], rtol=1e-5, atol=1e-5)
    vae = AutoencoderKL(**TINY_VAE)
    out = vae.decode(torch.randn(1, 4, 4, 4))
    assert out[0] is out["sample"] is out.sample and list(out) == ["sample"]
    posterior = vae.encode(torch.randn(1, 3, 8, 8))
    assert posterior[0] is posterior.latent_dist
    with pytest.raises(KeyError):
        out["nope"]


def test_configs_are_read_only_mappings_like_frozendict(unets):
    ref, ours = unets
    assert _plain(ours.config["block_out_channels"]) == _plain(ref.config["block_out_channels"])
    mine, theirs = dict(ours.config), dict(ref.config)
    assert set(mine) <= set(theirs)  # diffusers' adds _class_name, _diffusers_version, _use_default_values
    assert all(_plain(mine[k]) == _plain(theirs[k]) for k in mine)
    assert list(iter(ours.config)) == list(mine) and "sample_size" in ours.config
    assert ours.config.get("missing", 3) == 3 and len(ours.config) == len(mine)
    with pytest.raises(KeyError):
        ours.config["missing"]


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def test_save_config_and_load_config_round_trip_with_diffusers(unets, tmp_path):
    import diffusers
    ref, ours = unets
    ours.save_config(tmp_path / "ours")
    assert not list((tmp_path / "ours").glob("*.safetensors"))  # the config only
    theirs = diffusers.UNet3DConditionModel.load_config(str(tmp_path / "ours"))
    assert theirs["_class_name"] == "UNet3DConditionModel"
    rebuilt = diffusers.UNet3DConditionModel.from_config(theirs)
    assert list(rebuilt.config["block_out_channels"]) == list(ours.config.block_out_channels)
    ref.save_config(tmp_path / "theirs")
    loaded = UNet3DConditionModel.load_config(tmp_path / "theirs")
    rebuilt = UNet3DConditionModel.from_config(loaded).config
    assert {k: _plain(v) for k, v in rebuilt.items()} == {k: _plain(v) for k, v in ours.config.items()}


def test_from_config_warns_about_unknown_keys_and_ignores_them(unets):
    _, ours = unets
    with pytest.warns(UserWarning, match="ignoring \\['not_a_key'\\]") as caught:
        model = UNet3DConditionModel.from_config(ours.config, not_a_key=1)
    assert caught[0].filename == __file__  # points at the caller's line
    assert model.config == ours.config


def test_low_cpu_mem_usage_and_a_torch_dtype_per_component_load_as_in_diffusers(tiny_pipeline_dir):
    from diffusers import TextToVideoSDPipeline as RefPipeline
    dtypes = {"unet": torch.float16, "default": torch.float32}
    ref = RefPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=dtypes, low_cpu_mem_usage=True)
    ours = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=dtypes, low_cpu_mem_usage=True)
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(ours, name).dtype == getattr(ref, name).dtype, name
    model = UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", low_cpu_mem_usage=False)
    assert model.dtype == torch.float32
    with pytest.raises(TypeError, match="torch_dtype"):
        TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype={"unett": torch.float16})


@pytest.fixture(scope="module")
def variant_folders(tmp_path_factory):
    """The four situations: every model has fp16 files, some do, none does (and a misspelt variant)."""
    import diffusers
    root = tmp_path_factory.mktemp("variants")
    every = make_diffusers_pipeline_folder(str(root / "every"), variant="fp16", dtype=torch.float16)
    none = make_diffusers_pipeline_folder(str(root / "none"))
    some = str(root / "some")
    shutil.copytree(none, some)
    vae = diffusers.AutoencoderKL.from_pretrained(none, subfolder="vae")
    torch.manual_seed(5)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # different weights in the fp16 file: which one loaded shows
    vae.half().save_pretrained(f"{some}/vae", variant="fp16")
    return {"every": every, "some": some, "none": none}


@pytest.mark.parametrize("situation,variant", [("every", "fp16"), ("some", "fp16"), ("none", "fp16"),
                                               ("every", "fp16x")])
def test_variants_load_as_in_diffusers(variant_folders, situation, variant):
    import diffusers
    folder = variant_folders[situation]
    try:
        ref = diffusers.DiffusionPipeline.from_pretrained(folder, variant=variant)
    except ValueError as e:
        with pytest.raises(ValueError, match="variant"):
            DiffusionPipeline.from_pretrained(folder, variant=variant)
        assert "variant" in str(e)
        return
    ours = DiffusionPipeline.from_pretrained(folder, variant=variant)
    for name in ("unet", "vae"):
        mine, theirs = getattr(ours, name).state_dict(), getattr(ref, name).state_dict()
        for key in theirs:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), (name, key)


@torch.no_grad()
def test_freeu_gives_diffusers_numbers(unets, tiny_pipeline_dir):
    ref, ours = unets
    x, t, ctx = unet_inputs()
    try:
        ref.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        ours.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        freeu = ours(x, t, ctx).sample
        torch.testing.assert_close(freeu, ref(x, t, ctx).sample, rtol=1e-5, atol=1e-5)
        ours.disable_freeu()
        ref.disable_freeu()
        plain = ours(x, t, ctx).sample
        assert (freeu - plain).abs().max() > 1e-3  # it does something
        torch.testing.assert_close(plain, ref(x, t, ctx).sample, rtol=1e-5, atol=1e-5)
    finally:
        ref.disable_freeu()
        ours.disable_freeu()
    from diffusers import TextToVideoSDPipeline as RefPipeline
    pipes = [RefPipeline.from_pretrained(tiny_pipeline_dir), TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)]
    frames = []
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        frames.append(pipe("a red circle", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).frames)
        pipe.disable_freeu()
    assert np.abs(frames[0] - frames[1]).max() <= 1e-4


def test_fused_projections_and_the_xformers_switch_keep_the_video(tiny_pipeline_dir, caplog):
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).frames
    plain = run()
    pipe.fuse_qkv_projections()
    assert all(m.fused_weight is not None for m in pipe.vae.modules() if hasattr(m, "fused_weight"))
    np.testing.assert_allclose(run(), plain, atol=1e-5)
    pipe.unfuse_qkv_projections()
    with caplog.at_level(logging.INFO, logger="videofusion"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning, no error: a log line, once
        pipe.enable_xformers_memory_efficient_attention()
        pipe.enable_xformers_memory_efficient_attention()
        pipe.disable_xformers_memory_efficient_attention()
    assert caplog.text.count("scaled_dot_product_attention") <= 1
    np.testing.assert_array_equal(run(), plain)


def test_the_public_api_has_what_diffusers_scripts_import():
    from videofusion.utils import export_to_video
    assert export_to_video is videofusion.export_to_video
    for name in ("enable_freeu", "disable_freeu", "fuse_qkv_projections", "unfuse_qkv_projections",
                 "enable_xformers_memory_efficient_attention", "disable_xformers_memory_efficient_attention",
                 "enable_vae_slicing", "enable_vae_tiling", "enable_model_cpu_offload",
                 "enable_sequential_cpu_offload", "enable_attention_slicing"):
        assert callable(getattr(TextToVideoSDPipeline, name)), name

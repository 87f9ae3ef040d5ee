"""What scripts written against diffusers 0.42.1 call, checked against diffusers itself on tiny models:
outputs read both ways, configs as mappings, save_config / load_config, loading options (variants in every
situation, torch_dtype per component, low_cpu_mem_usage), FreeU, fused projections, the xformers switch."""
import logging
import re
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
        words = f"You are trying to load the model files of the `variant={variant}`"  # scripts test for these
        assert words in str(e)
        with pytest.raises(ValueError, match=re.escape(words) + ".*variant: no component"):
            DiffusionPipeline.from_pretrained(folder, variant=variant)
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


# ---------------------------------------------------------------- seeded init, model and pipeline attributes

@pytest.mark.parametrize("kind,config", [
    ("unet", TINY_UNET), ("unet", dict(TINY_UNET, layers_per_block=2, time_cond_proj_dim=5)),
    ("vae", TINY_VAE), ("vae", dict(TINY_VAE, layers_per_block=2, mid_block_add_attention=False))], ids=range(4))
def test_a_seeded_model_has_diffusers_random_weights_and_module_order(kind, config):
    import diffusers
    ref_cls, our_cls = {"unet": (diffusers.UNet3DConditionModel, UNet3DConditionModel),
                        "vae": (diffusers.AutoencoderKL, AutoencoderKL)}[kind]
    torch.manual_seed(0)
    ref = ref_cls(**config)
    torch.manual_seed(0)
    ours = our_cls(**config)
    theirs, mine = ref.state_dict(), ours.state_dict()
    assert list(mine) == list(theirs)  # registration order: the state_dict's (and a saved file's) key order
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # creation order: the random draws
    names = [n for n, _ in ours.named_modules()]
    assert names == [n for n, _ in ref.named_modules() if n in set(names)]


def test_model_attributes_register_to_config_and_loading_info_as_in_diffusers(tiny_pipeline_dir, tmp_path):
    import diffusers
    for ours, ref in ((UNet3DConditionModel, diffusers.UNet3DConditionModel),
                      (AutoencoderKL, diffusers.AutoencoderKL)):
        assert ours._keep_in_fp32_modules == ref._keep_in_fp32_modules and ours._deprecated_kwargs == []
        assert ours._supports_gradient_checkpointing
    unet, info = UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", output_loading_info=True)
    _, ref_info = diffusers.UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet",
                                                                 output_loading_info=True)
    assert info == {k: list(v) for k, v in ref_info.items()}
    unet.register_to_config(sample_size=16, test_attribute=5)
    assert unet.config.sample_size == 16 and unet.config.test_attribute == unet.config["test_attribute"] == 5
    with pytest.warns(FutureWarning):  # a config key as an attribute: deprecated in diffusers, still working
        assert unet.test_attribute == 5 and unet.in_channels == 4
    with pytest.raises(AttributeError) as error:
        unet.does_not_exist
    assert str(error.value) == "'UNet3DConditionModel' object has no attribute 'does_not_exist'"
    with pytest.raises(ValueError, match="layers_per_block"):
        unet.register_to_config(layers_per_block=0)
    unet.save_pretrained(tmp_path)
    assert diffusers.UNet3DConditionModel.load_config(tmp_path)["test_attribute"] == 5


def test_dtype_is_an_alias_of_torch_dtype_as_in_diffusers(tiny_pipeline_dir):
    import diffusers
    model = UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", dtype=torch.float16)
    ref = diffusers.UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", dtype=torch.float16)
    assert model.dtype == ref.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        AutoencoderKL.from_pretrained(tiny_pipeline_dir, subfolder="vae", dtype=torch.float16,
                                      torch_dtype=torch.bfloat16)
    dtypes = {"unet": torch.bfloat16, "default": torch.float16}
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, dtype=dtypes)
    ref_pipe = diffusers.TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, dtype=dtypes)
    for name in ("unet", "vae", "text_encoder"):
        assert getattr(pipe, name).dtype == getattr(ref_pipe, name).dtype, name
    with pytest.raises(ValueError, match="dtype"):
        DiffusionPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float16, torch_dtype=torch.float32)


def test_a_missing_variant_is_an_oserror_as_in_diffusers(tiny_pipeline_dir):
    import diffusers
    with pytest.raises(OSError):
        diffusers.UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", variant="fp16")
    with pytest.raises(OSError, match="variant 'fp16'"):
        UNet3DConditionModel.from_pretrained(tiny_pipeline_dir, subfolder="unet", variant="fp16")


def test_a_variant_only_folder_loaded_without_variant_says_no_file_named(unets, tmp_path):
    """diffusers' words ("Error no file named ... found in directory"), which fallback code tests for, then ours."""
    import diffusers
    unets[0].save_pretrained(tmp_path, variant="fp16")
    for cls in (diffusers.UNet3DConditionModel, UNet3DConditionModel):
        with pytest.raises(OSError, match="Error no file named diffusion_pytorch_model.bin found in directory"):
            cls.from_pretrained(tmp_path)
    with pytest.raises(OSError, match=r"fp16\.safetensors.*pass variant="):
        UNet3DConditionModel.from_pretrained(tmp_path)


def test_loading_logs_each_component_at_info(tiny_pipeline_dir, caplog):
    """As diffusers' pipeline_utils logger does, under videofusion's logger."""
    with caplog.at_level(logging.INFO, logger="videofusion.pipelines.folders"):
        pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    for name in pipe.components:
        assert f"Loaded {name} as" in caplog.text, name


def test_device_map_puts_the_pipeline_on_one_device(tiny_pipeline_dir):
    import diffusers
    ref = diffusers.TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, device_map="cpu")
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, device_map="cpu")
    assert pipe.device == ref.device == torch.device("cpu")
    for device_map in ("balanced", "auto", {"unet": 0}):
        with pytest.raises(ValueError, match="device_map"):
            DiffusionPipeline.from_pretrained(tiny_pipeline_dir, device_map=device_map)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device_map.*CUDA is not available"):
            TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir, device_map="cuda")


def test_pipeline_attributes_and_isinstance_as_in_diffusers(tiny_pipeline_dir):
    import diffusers
    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    v2v = videofusion.VideoToVideoSDPipeline(**pipe.components)
    assert isinstance(pipe, DiffusionPipeline) and isinstance(v2v, DiffusionPipeline)
    assert issubclass(videofusion.VideoToVideoSDPipeline, DiffusionPipeline)
    assert not isinstance(pipe.unet, DiffusionPipeline)
    assert pipe._optional_components == diffusers.TextToVideoSDPipeline._optional_components == []
    ref = diffusers.TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    for p in (pipe, ref):
        p.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    factors = [[getattr(block, k) for k in ("s1", "s2", "b1", "b2")] for block in pipe.unet.up_blocks]
    assert factors == [[getattr(block, k) for k in ("s1", "s2", "b1", "b2")] for block in ref.unet.up_blocks]
    for p in (pipe, ref):
        p.disable_freeu()
    assert all(getattr(block, k) is None for block in pipe.unet.up_blocks for k in ("s1", "s2", "b1", "b2"))
    assert all(getattr(block, k, None) is None for block in ref.unet.up_blocks for k in ("s1", "s2", "b1", "b2"))


@pytest.mark.parametrize("kind", ["vae", "unet"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    import diffusers
    if kind == "vae":
        build, inputs = (lambda: AutoencoderKL(**TINY_VAE)), (torch.randn(2, 3, 16, 16),)
        ref = diffusers.AutoencoderKL(**TINY_VAE)
        flagged = {type(m).__name__ for m in ref.modules() if hasattr(m, "gradient_checkpointing")}
    else:
        build, inputs = (lambda: UNet3DConditionModel(**TINY_UNET)), unet_inputs()
        flagged = {"UNet3DConditionModel"}
    torch.manual_seed(0)
    plain, checkpointed = build(), build()
    checkpointed.load_state_dict(plain.state_dict())
    assert not checkpointed.is_gradient_checkpointing
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.is_gradient_checkpointing
    assert {type(m).__name__ for m in checkpointed.modules() if getattr(m, "gradient_checkpointing", False)} == flagged
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks (the UNet's temporal convs train with dropout)
        model(*inputs).sample.square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert a.grad is None and b.grad is None or torch.allclose(a.grad, b.grad, atol=1e-6), name
    checkpointed.disable_gradient_checkpointing()
    assert not checkpointed.is_gradient_checkpointing

"""The fast inference path (videofusion.runtime.fast): same numbers as the plain model, nothing
changed in what is saved, on/off switches. The GPU speed itself is measured by bench/gpu.py."""
import numpy as np
import pytest
import torch

from helpers import TINY_UNET
from videofusion import TextToVideoSDPipeline, UNet3DConditionModel
from videofusion.models.attention import Attention, set_fused_projections
from videofusion.runtime.fast import FastPath, compile_cache_dir, set_conv_layout


def unet_inputs(seed=0, frames=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, frames, 8, 8, generator=g), torch.tensor(321),
            torch.randn(2, 7, TINY_UNET["cross_attention_dim"], generator=g))


@pytest.fixture()
def unet():
    torch.manual_seed(0)
    return UNet3DConditionModel(**TINY_UNET).eval()


def run(fn, x, t, ctx):
    with torch.no_grad():
        return fn(x, t, encoder_hidden_states=ctx, return_dict=False)[0]


def test_fused_projections_same_output_and_keys(unet):
    x, t, ctx = unet_inputs()
    keys = list(unet.state_dict())
    plain = run(unet, x, t, ctx)
    n = set_fused_projections(unet)
    assert n == sum(isinstance(m, Attention) for m in unet.modules()) > 0
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    assert all(m.fused_weight is not None for m in layers)
    cross = [m for m in layers if m.is_cross_attention]
    assert cross and all(m.fused_weight.shape[0] == 2 * m.to_k.out_features for m in cross)
    assert all(m.fused_weight.shape[0] == 3 * m.to_q.out_features for m in layers if not m.is_cross_attention)
    fused = run(unet, x, t, ctx)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert list(unet.state_dict()) == keys  # nothing new is saved
    set_fused_projections(unet, False)
    assert all(m.fused_weight is None for m in layers)
    torch.testing.assert_close(run(unet, x, t, ctx), plain, rtol=0, atol=0)


def test_fused_weights_follow_dtype_casts(unet):
    set_fused_projections(unet)
    unet.to(torch.float64)
    layer = next(m for m in unet.modules() if isinstance(m, Attention))
    assert layer.fused_weight.dtype == torch.float64


def test_channels_last_same_output(unet):
    x, t, ctx = unet_inputs(1)
    plain = run(unet, x, t, ctx)
    set_conv_layout(unet, torch.channels_last)
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not unet.conv_in.weight.is_contiguous()
    torch.testing.assert_close(run(unet, x, t, ctx), plain, rtol=1e-5, atol=1e-5)
    set_conv_layout(unet, torch.contiguous_format)
    assert unet.conv_in.weight.is_contiguous()


def test_compiled_forward_same_output_model_untouched(unet):
    x, t, ctx = unet_inputs(2)
    plain = run(unet, x, t, ctx)
    fast = FastPath(backend="aot_eager").apply(unet)
    fn = fast.forward(unet)
    assert fn is not unet
    out = run(fn, x, t, ctx)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
    # a second timestep value reuses the graph and stays right
    torch.testing.assert_close(run(fn, x, torch.tensor(7), ctx), run(unet, x, torch.tensor(7), ctx),
                               rtol=1e-5, atol=1e-5)
    assert type(unet).forward is UNet3DConditionModel.forward and "forward" not in vars(unet)
    fast.remove(unet)
    assert fast.forward(unet) is unet


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode"):
        FastPath(mode="fastest")


def test_compile_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VIDEOFUSION_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VIDEOFUSION_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache_dir() == tmp_path / "videofusion" / "inductor"


@pytest.fixture()
def pipe(tiny_pipeline_dir):
    p = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    p.set_progress_bar_config(disable=True)
    return p


def call(p, **kw):
    return p("a red circle moving left", num_frames=3, num_inference_steps=3,
             generator=torch.Generator().manual_seed(0), **kw).frames


def test_pipeline_fast_path_same_video(pipe, tmp_path):
    plain = call(pipe)
    pipe.enable_fast_path(backend="aot_eager")
    fast = call(pipe)
    np.testing.assert_allclose(fast, plain, atol=1e-5)
    pipe.save_pretrained(str(tmp_path / "saved"))  # the saved UNet has only checkpoint keys
    reloaded = TextToVideoSDPipeline.from_pretrained(str(tmp_path / "saved"))
    assert list(reloaded.unet.state_dict()) == list(pipe.unet.state_dict())
    pipe.disable_fast_path()
    assert pipe.placement.fast is None
    np.testing.assert_allclose(call(pipe), plain, atol=0)


def test_fast_path_is_off_until_asked_for(pipe, monkeypatch):
    """As in diffusers, the first call runs eager even on CUDA (compiling takes minutes); enable_fast_path()
    turns it on (compiling lazily), disable_fast_path() off."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipe.placement.unet_forward(pipe.unet) is pipe.unet and pipe.placement.fast is None
    pipe.enable_fast_path(backend="aot_eager")
    fn = pipe.placement.unet_forward(pipe.unet)  # nothing runs: torch.compile is lazy
    assert pipe.placement.fast is not None and fn is not pipe.unet
    assert pipe.placement.fast.fuse_qkv and pipe.placement.fast.channels_last and pipe.placement.fast.compile
    pipe.disable_fast_path()
    assert pipe.placement.unet_forward(pipe.unet) is pipe.unet and pipe.placement.fast is None


def test_fast_path_and_offload_exclude_each_other(pipe):
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(ValueError, match="offload"):
        pipe.enable_fast_path(backend="aot_eager")
    pipe.disable_cpu_offload()
    pipe.enable_fast_path(backend="aot_eager")
    pipe.enable_model_cpu_offload(device="cpu")
    assert pipe.placement.fast is None

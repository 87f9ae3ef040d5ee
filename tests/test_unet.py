"""UNet3DConditionModel: key/shape equality and numerical parity with diffusers (the oracle), memory
switches (attention slicing, forward chunking, gradient checkpointing), meta-device build, errors."""
import inspect
import json
import os

import numpy as np
import pytest
import torch

import diffusers
from diffusers.models.embeddings import get_timestep_embedding
from videofusion.models import UNet3DConditionModel, UNet3DConditionOutput, UNet3DConfig
from videofusion.models.config import config_to_dict
from videofusion.models.layers import timestep_embedding

pytestmark = pytest.mark.usefixtures("models_one_thread")

REFERENCE = "/work/shared/reference/text-to-video-ms-1.7b.json"
if not os.path.exists(REFERENCE):  # the same published config, for machines without the shared folder
    REFERENCE = None

CONFIGS = {
    # (a) two cross-attention blocks of 8 channels
    "two_blocks": dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4, cross_attention_dim=12,
                       attention_head_dim=4, down_block_types=("CrossAttnDownBlock3D",) * 2,
                       up_block_types=("CrossAttnUpBlock3D",) * 2),
    # (b) three blocks with a DownBlock3D/UpBlock3D, other groups, gelu, padding 0, mid scale, cond proj
    "three_blocks": dict(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8,
                         cross_attention_dim=6, attention_head_dim=8, act_fn="gelu", downsample_padding=0,
                         mid_block_scale_factor=1.5, norm_eps=1e-6, time_cond_proj_dim=5,
                         down_block_types=("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnDownBlock3D"),
                         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D")),
    # (c) attention_head_dim per block (heads 4, 4, 2 of 2, 4, 8 channels)
    "head_dim_list": dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4,
                          cross_attention_dim=12, attention_head_dim=[2, 4, 8],
                          down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                          up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter: zero-initialised layers (temporal conv outputs) must count too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def diffusers_unet(cfg: dict, monkeypatch=None) -> torch.nn.Module:
    """diffusers' model, random weights. diffusers cannot build a list attention_head_dim (its
    transformer_in multiplies 8 by the list); patch that one call to use the first entry, as we do."""
    if isinstance(cfg["attention_head_dim"], list):
        import diffusers.models.unets.unet_3d_condition as m
        original = m.TransformerTemporalModel

        def first_entry(*args, attention_head_dim, **kwargs):
            if isinstance(attention_head_dim, (list, tuple)):
                attention_head_dim = attention_head_dim[0]
            return original(*args, attention_head_dim=attention_head_dim, **kwargs)

        monkeypatch.setattr(m, "TransformerTemporalModel", first_entry)
    torch.manual_seed(0)
    return perturb_(diffusers.UNet3DConditionModel(**cfg))


def pair(name: str, monkeypatch=None):
    ref = diffusers_unet(CONFIGS[name], monkeypatch)
    ours = UNet3DConditionModel(CONFIGS[name]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def inputs(cfg: dict, batch: int = 2, num_frames: int = 3, height: int = 8, width: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, cfg.get("in_channels", 4), num_frames, height, width, generator=g)
    context = torch.randn(batch, 5, cfg["cross_attention_dim"], generator=g)
    return sample, context


# ---- structure ------------------------------------------------------------------------------


def published_unet_config() -> dict:
    if REFERENCE is None:
        pytest.skip("reference config not available")
    with open(REFERENCE) as f:
        return {k: v for k, v in json.load(f)["unet"].items() if not k.startswith("_")}


def test_published_config_keys_and_shapes_match_diffusers():
    cfg = published_unet_config()
    with torch.device("meta"):
        ours = UNet3DConditionModel(cfg)
        ref = diffusers.UNet3DConditionModel(**cfg)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours_shapes == ref_shapes
    assert sum(p.numel() for p in ours.parameters()) == 1411233860
    assert list(ours.buffers()) == []  # nothing the meta device could lose


def test_config_defaults_and_keys_are_diffusers():
    params = inspect.signature(diffusers.UNet3DConditionModel.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    ours = config_to_dict(UNet3DConfig())
    assert set(ours) == set(defaults)
    for k, v in defaults.items():
        assert ours[k] == (list(v) if isinstance(v, tuple) else v), k


def test_config_from_dict_kwargs_and_dataclass():
    cfg = CONFIGS["two_blocks"]
    a = UNet3DConditionModel(cfg)
    b = UNet3DConditionModel(**cfg)
    c = UNet3DConditionModel(UNet3DConfig(**cfg))
    d = UNet3DConditionModel.from_config({**cfg, "_class_name": "UNet3DConditionModel", "unknown": 1})
    for m in (b, c, d):
        assert config_to_dict(m.config) == config_to_dict(a.config)
    assert a.config.block_out_channels == (8, 8)


# ---- numerical parity -----------------------------------------------------------------------


def test_timestep_embedding_matches_diffusers():
    t = torch.tensor([0, 1, 17.5, 999])
    for dim in (8, 7, 320):
        ref = get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        assert torch.equal(timestep_embedding(t, dim), ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parity_with_diffusers(name, monkeypatch):
    ours, ref = pair(name, monkeypatch)
    cfg = CONFIGS[name]
    cases = [  # (timestep, num_frames, height, width)
        (10, 3, 8, 12),
        (torch.tensor(3.5), 1, 8, 12),
        (torch.tensor([5, 700]), 3, 12, 8),
        (999.0, 2, 6, 10),  # not a multiple of 2**(blocks-1): upsample to the skip sizes
    ]
    for timestep, num_frames, height, width in cases:
        sample, context = inputs(cfg, num_frames=num_frames, height=height, width=width)
        kwargs = {}
        if cfg.get("time_cond_proj_dim"):
            g = torch.Generator().manual_seed(3)
            kwargs["timestep_cond"] = torch.randn(2, cfg["time_cond_proj_dim"], generator=g)
        with torch.no_grad():
            got = ours(sample, timestep, context, **kwargs).sample
            want = ref(sample, timestep, context, **kwargs).sample
        assert got.shape == (2, 4, num_frames, height, width)
        assert rel_err(got, want) < 1e-5, (timestep, num_frames, height, width)


def test_return_types_and_batch_consistency():
    ours, _ = pair("two_blocks")
    sample, context = inputs(CONFIGS["two_blocks"])
    with torch.no_grad():
        out = ours(sample, 10, context)
        tup = ours(sample, 10, encoder_hidden_states=context, return_dict=False, cross_attention_kwargs={})
        one = ours(sample[1:], torch.tensor([10]), context[1:]).sample
    assert isinstance(out, UNet3DConditionOutput) and isinstance(tup, tuple) and len(tup) == 1
    assert torch.equal(out.sample, tup[0])
    assert torch.allclose(one[0], out.sample[1], atol=1e-5)  # batch items are independent


def test_timestep_types_agree():
    ours, _ = pair("two_blocks")
    sample, context = inputs(CONFIGS["two_blocks"])
    with torch.no_grad():
        outs = [ours(sample, t, context).sample for t in (7, 7.0, np.int64(7), np.float32(7), torch.tensor(7),
                                                           torch.tensor([7, 7]), torch.tensor([7.0]))]
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], atol=1e-6)


# ---- memory switches ------------------------------------------------------------------------


@pytest.mark.parametrize("slice_size", ["auto", "max", 1, 2])
def test_attention_slicing_is_exact(slice_size):
    ours, _ = pair("two_blocks")  # spatial/temporal layers have 2 heads, transformer_in 8
    sample, context = inputs(CONFIGS["two_blocks"])
    with torch.no_grad():
        plain = ours(sample, 10, context).sample
        ours.set_attention_slice(slice_size)
        sliced = ours(sample, 10, context).sample
        ours.set_attention_slice(None)
        again = ours(sample, 10, context).sample
    assert rel_err(sliced, plain) < 1e-5
    assert torch.equal(again, plain)


def test_attention_slice_list_and_errors():
    ours, _ = pair("two_blocks")
    from videofusion.models.attention import Attention
    layers = [m for m in ours.modules() if isinstance(m, Attention)]
    ours.set_attention_slice([1] * len(layers))
    assert all(m.slice_size == 1 for m in layers)
    ours.set_attention_slice("auto")
    assert [m.slice_size for m in layers] == [max(1, m.heads // 2) for m in layers]
    with pytest.raises(ValueError, match="slice_size"):
        ours.set_attention_slice(3)  # more than the 2 heads of the spatial layers
    with pytest.raises(ValueError, match="slice_size"):
        ours.set_attention_slice([1, 1])
    with pytest.raises(TypeError, match="slice_size"):
        ours.set_attention_slice("half")


@pytest.mark.parametrize("chunk_size,dim", [(None, 0), (1, 0), (2, 1), (5, 1)])
def test_forward_chunking_is_exact(chunk_size, dim):
    ours, _ = pair("three_blocks")
    sample, context = inputs(CONFIGS["three_blocks"])
    cond = torch.randn(2, 5)
    with torch.no_grad():
        plain = ours(sample, 10, context, timestep_cond=cond).sample
        ours.enable_forward_chunking(chunk_size, dim)
        chunked = ours(sample, 10, context, timestep_cond=cond).sample
        ours.disable_forward_chunking()
        again = ours(sample, 10, context, timestep_cond=cond).sample
    assert rel_err(chunked, plain) < 1e-5  # float rounding of differently shaped matmuls only
    assert torch.equal(again, plain)
    with pytest.raises(ValueError, match="dim"):
        ours.enable_forward_chunking(1, dim=2)


def test_gradient_checkpointing_gives_same_gradients():
    ours, _ = pair("two_blocks")
    ours.train()  # temporal convs have dropout 0.1: the recomputation must replay the same masks
    sample, context = inputs(CONFIGS["two_blocks"], batch=1, num_frames=2, height=4, width=4)

    def grads():
        ours.zero_grad()
        torch.manual_seed(5)
        ours(sample, 10, context).sample.square().mean().backward()
        return [p.grad.clone() for p in ours.parameters()]

    plain = grads()
    ours.enable_gradient_checkpointing()
    ckpt = grads()
    ours.disable_gradient_checkpointing()
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(plain, ckpt))
    assert any(g.abs().sum() > 0 for g in plain)


def test_meta_build_then_assign_load():
    ours, _ = pair("three_blocks")
    with torch.device("meta"):
        empty = UNet3DConditionModel(CONFIGS["three_blocks"])
    assert all(p.is_meta for p in empty.parameters())
    empty.load_state_dict(ours.state_dict(), strict=True, assign=True)
    sample, context = inputs(CONFIGS["three_blocks"])
    cond = torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(empty.eval()(sample, 10, context, timestep_cond=cond).sample,
                           ours(sample, 10, context, timestep_cond=cond).sample)


def test_bfloat16_runs_close_to_float32():
    ours, _ = pair("two_blocks")
    sample, context = inputs(CONFIGS["two_blocks"])
    with torch.no_grad():
        want = ours(sample, 10, context).sample
        got = ours.to(torch.bfloat16)(sample.bfloat16(), 10, context.bfloat16()).sample
    assert got.dtype == torch.bfloat16
    assert rel_err(got.float(), want) < 0.1


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ("CrossAttnDownBlock2D", "DownBlock3D")),
    ("up_block_types", ("UpBlock3D",)),
    ("block_out_channels", (8, 8, 8)),
    ("block_out_channels", ()),
    ("norm_num_groups", 3),
    ("norm_num_groups", None),
    ("num_attention_heads", 4),
    ("attention_head_dim", [4, 4, 4]),
    ("attention_head_dim", 16),  # more than the 8 channels: zero heads
    ("act_fn", "tanh"),
    ("layers_per_block", 0),
    ("cross_attention_dim", None),
    ("downsample_padding", -1),
    ("time_cond_proj_dim", 0),
])
def test_bad_config_raises_value_error_naming_the_key(key, value):
    cfg = {**CONFIGS["two_blocks"], key: value}
    with pytest.raises(ValueError, match=key):
        UNet3DConditionModel(cfg)


def test_bad_forward_inputs():
    ours = UNet3DConditionModel(CONFIGS["two_blocks"]).eval()
    sample, context = inputs(CONFIGS["two_blocks"])
    with pytest.raises(ValueError, match="cross_attention_kwargs"):
        ours(sample, 1, context, cross_attention_kwargs={"scale": 0.5})
    with pytest.raises(ValueError, match="sample"):
        ours(sample[:, :3], 1, context)
    with pytest.raises(ValueError, match="sample"):
        ours(sample[:, :, 0], 1, context)
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(sample, 1, context[:1])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(sample, 1, context[..., :4])
    with pytest.raises(ValueError, match="encoder_hidden_states"):
        ours(sample, 1, None)
    with pytest.raises(ValueError, match="timestep"):
        ours(sample, torch.tensor([1, 2, 3]), context)
    with pytest.raises(TypeError, match="timestep"):
        ours(sample, "1", context)
    with pytest.raises(ValueError, match="timestep_cond"):
        ours(sample, 1, context, timestep_cond=torch.zeros(2, 3))

"""AutoencoderKL: key/shape equality and numerical parity with diffusers (the oracle), the posterior,
slicing (exact), tiling (diffusers' tiled numbers), meta-device build, errors."""
import inspect
import json
import os

import pytest
import torch

import diffusers
from videofusion.models import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, VAEConfig
from videofusion.models.config import config_to_dict

pytestmark = pytest.mark.usefixtures("models_one_thread")

REFERENCE = "/work/shared/reference/text-to-video-ms-1.7b.json"

CONFIGS = {
    # the published layout, shrunk; sample_size 16 -> 16-pixel / 8-latent tiles
    "two_blocks": dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                       down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                       sample_size=16),
    # three blocks, other groups and activation, no mid attention, no quant convs
    "three_blocks": dict(block_out_channels=(8, 8, 16), layers_per_block=2, norm_num_groups=8, latent_channels=3,
                         in_channels=2, out_channels=5, act_fn="mish", mid_block_add_attention=False,
                         use_quant_conv=False, use_post_quant_conv=False, sample_size=32,
                         down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def pair(name: str):
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**CONFIGS[name])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    ours = AutoencoderKL(CONFIGS[name]).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref.eval()


def images(cfg: dict, batch: int = 2, height: int = 24, width: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, cfg.get("in_channels", 3), height, width, generator=torch.Generator().manual_seed(seed))


def latents(cfg: dict, batch: int = 2, height: int = 6, width: int = 5, seed: int = 2) -> torch.Tensor:
    return torch.randn(batch, cfg["latent_channels"], height, width, generator=torch.Generator().manual_seed(seed))


# ---- structure ------------------------------------------------------------------------------


def test_published_config_keys_and_shapes_match_diffusers():
    if not os.path.exists(REFERENCE):
        pytest.skip("reference config not available")
    with open(REFERENCE) as f:
        cfg = {k: v for k, v in json.load(f)["vae"].items() if not k.startswith("_")}
    with torch.device("meta"):
        ours = AutoencoderKL(cfg)
        ref = diffusers.AutoencoderKL(**cfg)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 83653863
    assert list(ours.buffers()) == []
    assert (ours.tile_sample_min_size, ours.tile_latent_min_size) == (ref.tile_sample_min_size,
                                                                      ref.tile_latent_min_size) == (512, 64)


def test_config_defaults_and_keys_are_diffusers():
    params = inspect.signature(diffusers.AutoencoderKL.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k != "self"}
    ours = config_to_dict(VAEConfig())
    assert set(ours) == set(defaults)
    for k, v in defaults.items():
        assert ours[k] == (list(v) if isinstance(v, tuple) else v), k


# ---- numerical parity -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encode_decode_parity(name):
    ours, ref = pair(name)
    cfg = CONFIGS[name]
    x, z = images(cfg), latents(cfg)
    with torch.no_grad():
        got, want = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        for attr in ("mean", "logvar", "std", "var"):
            assert rel_err(getattr(got, attr), getattr(want, attr)) < 1e-5, attr
        assert torch.equal(got.mode(), got.mean)
        decoded = ours.decode(z).sample
        assert decoded.shape == (2, cfg.get("out_channels", 3), 6 * 2 ** (len(cfg["block_out_channels"]) - 1),
                                 5 * 2 ** (len(cfg["block_out_channels"]) - 1))
        assert rel_err(decoded, ref.decode(z).sample) < 1e-5
        assert rel_err(ours(x).sample, ref(x).sample) < 1e-5


def test_posterior_sample_kl_nll_match_diffusers():
    ours, ref = pair("two_blocks")
    x = images(CONFIGS["two_blocks"])
    with torch.no_grad():
        got, want = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        a = got.sample(generator=torch.Generator().manual_seed(7))
        b = want.sample(generator=torch.Generator().manual_seed(7))
        assert rel_err(a, b) < 1e-5
        gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
        a = got.sample(generator=gens)
        b = want.sample(generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
        assert rel_err(a, b) < 1e-5
        assert rel_err(got.kl(), want.kl()) < 1e-5
        other, other_ref = ours.encode(x.flip(0)).latent_dist, ref.encode(x.flip(0)).latent_dist
        assert rel_err(got.kl(other), want.kl(other_ref)) < 1e-5
        assert rel_err(got.nll(a), want.nll(a)) < 1e-5
        sampled = ours(x, sample_posterior=True, generator=torch.Generator().manual_seed(9)).sample
        sampled_ref = ref(x, sample_posterior=True, generator=torch.Generator().manual_seed(9)).sample
        assert rel_err(sampled, sampled_ref) < 1e-5
    with pytest.raises(ValueError, match="generator"):  # a list must hold one generator per item (or just one)
        got.sample(generator=[torch.Generator() for _ in range(got.mean.shape[0] + 1)])


def test_return_types():
    ours, _ = pair("two_blocks")
    x, z = images(CONFIGS["two_blocks"]), latents(CONFIGS["two_blocks"])
    with torch.no_grad():
        enc, enc_t = ours.encode(x), ours.encode(x, return_dict=False)
        dec, dec_t = ours.decode(z), ours.decode(z, return_dict=False)
        fwd_t = ours(x, return_dict=False)
    assert isinstance(enc, AutoencoderKLOutput) and isinstance(enc_t, tuple) and len(enc_t) == 1
    assert torch.equal(enc.latent_dist.mean, enc_t[0].mean)
    assert isinstance(dec, DecoderOutput) and torch.equal(dec.sample, dec_t[0]) and len(dec_t) == 1
    assert isinstance(fwd_t, tuple) and fwd_t[0].shape == x.shape


# ---- slicing and tiling ---------------------------------------------------------------------


def test_slicing_is_exact():
    ours, _ = pair("two_blocks")
    x, z = images(CONFIGS["two_blocks"], batch=3), latents(CONFIGS["two_blocks"], batch=3)
    with torch.no_grad():
        plain_enc, plain_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
        ours.enable_slicing()
        assert ours.use_slicing
        sliced_enc, sliced_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
        ours.disable_slicing()
    assert not ours.use_slicing
    assert rel_err(sliced_enc, plain_enc) < 1e-5  # float rounding of batched vs single convs only
    assert rel_err(sliced_dec, plain_dec) < 1e-5


@pytest.mark.parametrize("name,slicing", [("two_blocks", False), ("two_blocks", True), ("three_blocks", False)])
def test_tiling_matches_diffusers_tiled_paths(name, slicing):
    ours, ref = pair(name)
    cfg = CONFIGS[name]
    factor = 2 ** (len(cfg["block_out_channels"]) - 1)
    tile = ours.tile_sample_min_size
    # larger than a tile, not a multiple of the tile stride, non-square
    x = images(cfg, height=tile + tile // 2 + factor, width=2 * tile + factor)
    z = latents(cfg, height=ours.tile_latent_min_size + 3, width=2 * ours.tile_latent_min_size + 1)
    with torch.no_grad():
        untiled_enc, untiled_dec = ours.encode(x).latent_dist.mean, ours.decode(z).sample
        for m in (ours, ref):
            m.enable_tiling()
            if slicing:
                m.enable_slicing()
        assert ours.use_tiling
        got_enc, want_enc = ours.encode(x).latent_dist, ref.encode(x).latent_dist
        got_dec, want_dec = ours.decode(z).sample, ref.decode(z).sample
        ours.disable_tiling()
        ours.disable_slicing()
        assert not ours.use_tiling and torch.equal(ours.decode(z).sample, untiled_dec)
    assert got_enc.mean.shape == untiled_enc.shape and got_dec.shape == untiled_dec.shape
    assert rel_err(got_enc.mean, want_enc.mean) < 1e-5
    assert rel_err(got_enc.logvar, want_enc.logvar) < 1e-5
    assert rel_err(got_dec, want_dec) < 1e-5
    # the tiled path really ran: seams make it differ from the plain one
    assert rel_err(got_enc.mean, untiled_enc) > 1e-3 and rel_err(got_dec, untiled_dec) > 1e-3


def test_list_sample_size_tiles_by_its_first_entry():
    # diffusers keeps the list as its tile size and then fails comparing it with ints when tiling
    vae = AutoencoderKL({**CONFIGS["two_blocks"], "sample_size": [24, 24]})
    assert (vae.tile_sample_min_size, vae.tile_latent_min_size) == (24, 12)


def test_meta_build_then_assign_load():
    ours, _ = pair("three_blocks")
    with torch.device("meta"):
        empty = AutoencoderKL(CONFIGS["three_blocks"])
    empty.load_state_dict(ours.state_dict(), strict=True, assign=True)
    z = latents(CONFIGS["three_blocks"])
    with torch.no_grad():
        assert torch.equal(empty.eval().decode(z).sample, ours.decode(z).sample)


# ---- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ("AttnDownEncoderBlock2D", "DownEncoderBlock2D")),
    ("up_block_types", ("UpDecoderBlock2D",)),
    ("block_out_channels", (8, 16, 16)),
    ("norm_num_groups", 3),
    ("act_fn", "tanh"),
    ("layers_per_block", 0),
    ("latent_channels", 0),
    ("sample_size", 0),
])
def test_bad_config_raises_value_error_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        AutoencoderKL({**CONFIGS["two_blocks"], key: value})


def test_bad_inputs():
    ours = AutoencoderKL(CONFIGS["two_blocks"])
    with pytest.raises(ValueError, match="x"):
        ours.encode(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="z"):
        ours.decode(torch.zeros(1, 4, 1, 8, 8))

"""AutoencoderKL: the latent-diffusion image VAE (Rombach et al. 2022), diffusers-compatible
(same config.json keys, same state_dict keys: encoder.*, decoder.*, quant_conv, post_quant_conv).

Images are (batch, channels, height, width); the video pipeline folds frames into the batch.
``encode`` gives a diagonal Gaussian over latents (mean, logvar); ``decode`` maps latents back.
Two memory switches, as in diffusers: slicing (one image at a time, exact) and tiling (overlapping
tiles blended linearly at the seams, not exact, the same numbers as diffusers' tiled paths).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..noise import randn
from ..outputs import Output
from .config import ModelConfig, PretrainedModel
from .attention import SDPA_PROCESSOR, Attention, attn_processors, set_attn_processor, set_fused_projections
from .layers import Downsample2D, ResnetBlock2D, Upsample2D, check_norm_and_activation, config_error, positive_int

EPS = 1e-6  # GroupNorm eps everywhere in the VAE


def checkpointed(enabled: bool, fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    """``fn(*args)``; when ``enabled`` (gradient checkpointing on) and grad is on, its activations are
    recomputed in the backward pass instead of stored (``torch.utils.checkpoint``), as in diffusers' VAE."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


@dataclass
class VAEConfig(ModelConfig):
    """Every key of diffusers' ``AutoencoderKL`` config.json, with diffusers' defaults."""

    in_channels: int = 3
    out_channels: int = 3
    down_block_types: Sequence[str] = ("DownEncoderBlock2D",)
    up_block_types: Sequence[str] = ("UpDecoderBlock2D",)
    block_out_channels: Sequence[int] = (64,)
    layers_per_block: int = 1
    act_fn: str = "silu"
    latent_channels: int = 4
    norm_num_groups: int = 32
    sample_size: int | Sequence[int] = 32  # pixels; also the tile size when tiling
    scaling_factor: float = 0.18215  # latents are multiplied by it before the UNet
    shift_factor: float | None = None
    latents_mean: Sequence[float] | None = None
    latents_std: Sequence[float] | None = None
    force_upcast: bool = True  # pipelines run this VAE in float32
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True

    def __post_init__(self):
        n = len(self.block_out_channels) if isinstance(self.block_out_channels, (list, tuple)) else 0
        if n == 0 or not all(positive_int(c) for c in self.block_out_channels):
            raise config_error("block_out_channels", self.block_out_channels, "a non-empty list of positive ints")
        for key, accepted in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            types = getattr(self, key)
            if not isinstance(types, (list, tuple)) or len(types) != n or any(t != accepted for t in types):
                raise config_error(key, types, f"a list of {n} (len(block_out_channels)) times {accepted!r}")
        for key in ("in_channels", "out_channels", "layers_per_block", "latent_channels"):
            if not positive_int(getattr(self, key)):
                raise config_error(key, getattr(self, key), "a positive int")
        check_norm_and_activation(self.norm_num_groups, self.block_out_channels, self.act_fn)
        size = self.sample_size[0] if isinstance(self.sample_size, (list, tuple)) and self.sample_size \
            else self.sample_size
        if not positive_int(size):
            raise config_error("sample_size", self.sample_size, "a positive int (or a list of them)")

    @property
    def scale_factor(self) -> int:
        """Pixels per latent cell, each way: 2 ** (number of blocks - 1); 8 for the published checkpoints."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class AutoencoderKLOutput(Output):
    """``latent_dist``: the :class:`DiagonalGaussianDistribution` over latents."""

    latent_dist: "DiagonalGaussianDistribution"


@dataclass
class DecoderOutput(Output):
    """``sample`` (batch, out_channels, height, width): decoded images."""

    sample: torch.Tensor


class DiagonalGaussianDistribution:
    """N(mean, exp(logvar)) per latent element, from the encoder's moments (b, 2*latent, h, w)
    split along channels; logvar clamped to [-30, 20]."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (b, latent, h, w) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """mean + std * noise, noise drawn with ``generator`` (reparameterisation trick)."""
        return self.mean + self.std * randn(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL(self || other) summed over (c, h, w) -> (b,); ``other=None`` is the standard normal."""
        if other is None:
            return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
        return 0.5 * torch.sum((self.mean - other.mean).pow(2) / other.var + self.var / other.var
                               - 1.0 - self.logvar + other.logvar, dim=[1, 2, 3])

    def nll(self, sample: torch.Tensor, dims: Sequence[int] = (1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample`` summed over ``dims``."""
        log_two_pi = 1.8378770664093453  # log(2 pi)
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean).pow(2) / self.var, dim=list(dims))


# ---------------------------------------------------------------------------------------------
# encoder / decoder


class DownEncoderBlock2D(nn.Module):
    """``layers`` ResNets, then an optional stride-2 conv (padded right/bottom)."""

    def __init__(self, cfg: VAEConfig, in_channels: int, out_channels: int, add_downsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, cfg.norm_num_groups, EPS,
                          cfg.act_fn) for i in range(cfg.layers_per_block))
        self.downsamplers = nn.ModuleList([Downsample2D(out_channels, padding=0)]) if add_downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpDecoderBlock2D(nn.Module):
    """``layers + 1`` ResNets, then an optional 2x upsample."""

    def __init__(self, cfg: VAEConfig, in_channels: int, out_channels: int, add_upsample: bool):
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, cfg.norm_num_groups, EPS,
                          cfg.act_fn) for i in range(cfg.layers_per_block + 1))
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class UNetMidBlock2D(nn.Module):
    """ResNet -> [single-head self-attention over all pixels] -> ResNet."""

    def __init__(self, cfg: VAEConfig, channels: int):
        super().__init__()
        # diffusers' creation order (ResNet, attention, ResNet: a seeded random init gives its weights) and
        # registration order (attentions before resnets: its state_dict order)
        first = ResnetBlock2D(channels, channels, None, cfg.norm_num_groups, EPS, cfg.act_fn)
        self.attentions = (nn.ModuleList([Attention(channels, 1, channels, bias=True,
                                                    norm_num_groups=cfg.norm_num_groups, eps=EPS)])
                           if cfg.mid_block_add_attention else None)
        self.resnets = nn.ModuleList(
            [first, ResnetBlock2D(channels, channels, None, cfg.norm_num_groups, EPS, cfg.act_fn)])
        self.gradient_checkpointing = False  # each layer recomputed in the backward pass (training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = checkpointed(self.gradient_checkpointing, self.resnets[0], x)
        if self.attentions is not None:
            x = checkpointed(self.gradient_checkpointing, self.attentions[0], x)
        return checkpointed(self.gradient_checkpointing, self.resnets[1], x)


class Encoder(nn.Module):
    """Image (b, in_channels, H, W) -> moments (b, 2*latent_channels, H/2**(n-1), W/2**(n-1))."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, n = list(cfg.block_out_channels), len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownEncoderBlock2D(cfg, ch[max(i - 1, 0)], ch[i], add_downsample=i < n - 1) for i in range(n))
        self.mid_block = UNetMidBlock2D(cfg, ch[-1])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, ch[-1], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)
        self.gradient_checkpointing = False  # each block recomputed in the backward pass (training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = checkpointed(self.gradient_checkpointing, block, x)
        x = self.mid_block(x)  # checkpoints its own layers
        return self.conv_out(self.conv_act(self.conv_norm_out(x)))


class Decoder(nn.Module):
    """Latents (b, latent_channels, h, w) -> image (b, out_channels, h*2**(n-1), w*2**(n-1))."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        rev, n = list(cfg.block_out_channels)[::-1], len(cfg.block_out_channels)
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.up_blocks = nn.ModuleList()  # registered before mid_block, built after it: diffusers' module order
        self.mid_block = UNetMidBlock2D(cfg, rev[0])
        self.up_blocks.extend(
            UpDecoderBlock2D(cfg, rev[max(i - 1, 0)], rev[i], add_upsample=i < n - 1) for i in range(n))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, rev[-1], eps=EPS)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)
        self.gradient_checkpointing = False  # each block recomputed in the backward pass (training)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.device.type == "cpu":
            # oneDNN's convolutions run NHWC without reorders: 1.4x faster decode on the CPU (measured,
            # docs/performance.md). diffusers' decoder turns NHWC by accident, after its mid-block attention.
            z = z.contiguous(memory_format=torch.channels_last)
        x = self.mid_block(self.conv_in(z))  # checkpoints its own layers
        for block in self.up_blocks:
            x = checkpointed(self.gradient_checkpointing, block, x)
        return self.conv_out(self.conv_act(self.conv_norm_out(x))).contiguous()  # (b, c, H, W), NCHW


# ---------------------------------------------------------------------------------------------
# tiling


def blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """``b`` with its first ``extent`` rows (dim=2) or columns (dim=3) cross-faded from the last ones of
    ``a``: weight of ``b`` rises linearly ``0, 1/extent, ...`` (diffusers' blend_v / blend_h)."""
    extent = min(a.shape[dim], b.shape[dim], extent)
    if extent <= 0:
        return b
    w = (torch.arange(extent, dtype=torch.float64) / extent)  # weights in float64, as Python scalars are
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    w_b, w_a = w.to(b.device, b.dtype).view(shape), (1 - w).to(b.device, b.dtype).view(shape)
    b = b.clone()
    head = b.narrow(dim, 0, extent)
    head.copy_(a.narrow(dim, a.shape[dim] - extent, extent) * w_a + head * w_b)
    return b


def tiled_apply(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int,
                overlap: float) -> torch.Tensor:
    """Run ``fn`` on ``tile_in``-pixel tiles of ``x`` (b, c, H, W) overlapping by ``overlap`` of a tile,
    blend each tile into its upper and left neighbours over ``overlap * tile_out`` output pixels, keep
    ``tile_out * (1 - overlap)`` of each and stitch. ``fn`` maps a tile_in tile to a tile_out tile."""
    stride = int(tile_in * (1 - overlap))
    extent = int(tile_out * overlap)
    keep = tile_out - extent
    rows = [[fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)]
    for i, row in enumerate(rows):
        for j in range(len(row)):
            if i > 0:
                row[j] = blend(rows[i - 1][j], row[j], extent, dim=2)
            if j > 0:
                row[j] = blend(row[j - 1], row[j], extent, dim=3)
    return torch.cat([torch.cat([t[:, :, :keep, :keep] for t in row], dim=3) for row in rows], dim=2)


# ---------------------------------------------------------------------------------------------
# the model


class AutoencoderKL(PretrainedModel):
    """KL-regularised image autoencoder. Build from a :class:`VAEConfig`, a config.json dict or keywords.

    ``use_slicing`` / ``use_tiling`` (see ``enable_slicing`` / ``enable_tiling``); tiles are
    ``tile_sample_min_size`` pixels (the config's sample_size) and ``tile_latent_min_size`` latents,
    overlapping by ``tile_overlap_factor`` (0.25).
    """

    config_class = VAEConfig
    _supports_gradient_checkpointing = True  # enable_gradient_checkpointing: encoder, decoder and mid blocks

    def __init__(self, config: VAEConfig | dict | None = None, **kwargs):
        super().__init__()
        cfg = self.config = self.make_config(config, **kwargs)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        latent = cfg.latent_channels
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if cfg.use_post_quant_conv else None
        self.use_slicing = False
        self.slice_size = 1  # images per slice when slicing
        self.use_tiling = False
        size = cfg.sample_size[0] if isinstance(cfg.sample_size, (list, tuple)) else cfg.sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / cfg.scale_factor)
        self.tile_overlap_factor = 0.25

    def enable_slicing(self, slice_size: int = 1) -> None:
        """Encode/decode ``slice_size`` images at a time (default 1): exact, lower peak memory."""
        if not positive_int(slice_size):
            raise ValueError(f"slice_size: must be a positive int, got {slice_size!r}")
        self.use_slicing, self.slice_size = True, slice_size

    def disable_slicing(self) -> None:
        self.use_slicing = False

    @property
    def attn_processors(self) -> dict:
        """The processor of the mid-block attention layers, keyed ``"<layer name>.processor"`` as in diffusers."""
        return attn_processors(self)

    def set_attn_processor(self, processor) -> None:
        """One processor for every attention layer, or a dict keyed as :attr:`attn_processors` (diffusers')."""
        set_attn_processor(self, processor)

    def set_default_attn_processor(self) -> None:
        """Every layer back on the built-in attention (PyTorch's fused SDPA)."""
        set_attn_processor(self, SDPA_PROCESSOR)

    def fuse_qkv_projections(self) -> None:
        """One matrix multiply for q, k, v of the mid-block attention (same outputs up to rounding)."""
        set_fused_projections(self, True)

    def unfuse_qkv_projections(self) -> None:
        set_fused_projections(self, False)

    def enable_tiling(self) -> None:
        """Encode/decode images larger than a tile in overlapping blended tiles (not exact at seams)."""
        self.use_tiling = True

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def _encode_one(self, x: torch.Tensor) -> torch.Tensor:
        def enc(tile):
            moments = self.encoder(tile)
            return self.quant_conv(moments) if self.quant_conv is not None else moments

        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return tiled_apply(x, enc, self.tile_sample_min_size, self.tile_latent_min_size, self.tile_overlap_factor)
        return enc(x)

    def _decode_one(self, z: torch.Tensor) -> torch.Tensor:
        def dec(tile):
            return self.decoder(self.post_quant_conv(tile) if self.post_quant_conv is not None else tile)

        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return tiled_apply(z, dec, self.tile_latent_min_size, self.tile_sample_min_size, self.tile_overlap_factor)
        return dec(z)

    def _check(self, t: torch.Tensor, name: str, channels: int) -> None:
        if not torch.is_tensor(t) or t.ndim != 4 or t.shape[1] != channels:
            shape = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"{name}: expected a (batch, {channels}, height, width) tensor, got {shape}")

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images x (b, in_channels, H, W), about [-1, 1] -> ``AutoencoderKLOutput(latent_dist)`` (or a
        1-tuple) with a Gaussian over (b, latent_channels, H/2**(n-1), W/2**(n-1)) latents."""
        self._check(x, "x", self.config.in_channels)
        if self.use_slicing and x.shape[0] > self.slice_size:
            moments = torch.cat([self._encode_one(part) for part in x.split(self.slice_size)])
        else:
            moments = self._encode_one(x)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Latents z (b, latent_channels, h, w), unscaled -> ``DecoderOutput(sample)`` (or a 1-tuple)
        with images (b, out_channels, h*2**(n-1), w*2**(n-1))."""
        self._check(z, "z", self.config.latent_channels)
        if self.use_slicing and z.shape[0] > self.slice_size:
            images = torch.cat([self._decode_one(part) for part in z.split(self.slice_size)])
        else:
            images = self._decode_one(z)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | list[torch.Generator] | None = None) -> DecoderOutput | tuple:
        """Encode then decode ``sample`` (b, in_channels, H, W) through the posterior's mode, or a
        sample of it drawn with ``generator`` when ``sample_posterior``."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        images = self.decode(z).sample
        return DecoderOutput(sample=images) if return_dict else (images,)

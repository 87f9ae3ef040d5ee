"""Building blocks shared by the UNet3D denoiser and the VAE.

One definition each: timestep embedding, ResNet block, attention (PyTorch SDPA), GEGLU feed-forward,
transformer block, spatial and temporal transformers, ModelScope's temporal convolution, and 2x
down/up sampling. Attribute names are diffusers' checkpoint keys (``to_q``, ``to_out.0``,
``ff.net.2``, ``conv1.2``, ...), so a diffusers state dict loads with no renaming.

Image tensors inside the models are ``(batch * num_frames, channels, height, width)``: frames are
folded into the batch for the 2-D layers and unfolded by the temporal ones, which take ``num_frames``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .chunking import dense, group_normalize, group_stats, pixel_view, pixels_per_chunk
from .windows import fuse_windows

ACTIVATIONS = {"silu": nn.SiLU, "swish": nn.SiLU, "mish": nn.Mish, "gelu": nn.GELU, "relu": nn.ReLU}


def config_error(key: str, value, accepted: str) -> ValueError:
    """The ValueError for a bad config value: names the key, the value and what is accepted."""
    return ValueError(f"config {key}={value!r} is invalid: expected {accepted}")


def positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_norm_and_activation(norm_num_groups, block_out_channels, act_fn) -> None:
    """ValueError unless ``norm_num_groups`` divides every block width and ``act_fn`` is a known activation."""
    if not positive_int(norm_num_groups) or any(c % norm_num_groups for c in block_out_channels):
        raise config_error("norm_num_groups", norm_num_groups, f"a positive int dividing every "
                           f"block_out_channels entry {list(block_out_channels)}")
    if not isinstance(act_fn, str) or act_fn.lower() not in ACTIVATIONS:
        raise config_error("act_fn", act_fn, f"one of {sorted(ACTIVATIONS)}")


def get_activation(name: str) -> nn.Module:
    """A fresh activation module by diffusers' name (case-insensitive): silu, swish, mish, gelu, relu."""
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise config_error("act_fn", name, f"one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name.lower()]()


# ---------------------------------------------------------------------------------------------
# time


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Ho et al. 2020, after Vaswani et al. 2017), cosines first.

    ``timesteps`` (n,) may be fractional; returns (n, dim) float32 ``[cos(t w_i), sin(t w_i)]`` with
    ``w_i = max_period ** (-i / (dim // 2))`` (diffusers' ``flip_sin_to_cos=True, downscale_freq_shift=0``),
    zero-padded by one column when ``dim`` is odd. Computed on the fly: no buffer to lose on the meta device.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    args = timesteps[:, None].float() * torch.exp(exponent)[None, :]  # (n, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (n, 2*half)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """FreeU's skip-feature filter (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net", eq. 6): scale the
    lowest spatial frequencies of ``x`` (b, c, h, w) by ``scale``: the centred 2-D FFT's square of half-width
    ``threshold``. Computed in float32, returned in ``x.dtype``."""
    h, w = x.shape[-2:]
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))  # (b, c, h, w) complex
    mask = torch.ones(x.shape, device=x.device)
    mask[..., h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


class TimestepEmbedding(nn.Module):
    """MLP on the sinusoidal embedding: ``linear_2(act(linear_1(x + cond_proj(cond))))``."""

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu",
                 cond_proj_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            sample = sample + self.cond_proj(condition)
        return self.linear_2(self.act(self.linear_1(sample)))


# ---------------------------------------------------------------------------------------------
# convolutional blocks


class ResnetBlock2D(nn.Module):
    """Pre-norm ResNet block (GroupNorm -> act -> conv, twice) with an optional additive time embedding.

    ``temb_channels=None`` gives the VAE's block (no ``time_emb_proj``). The skip path gets a 1x1
    ``conv_shortcut`` when the channel count changes. Output is ``(skip + h) / output_scale_factor``.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int | None, groups: int,
                 eps: float, act_fn: str = "silu", output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nonlinearity = get_activation(act_fn)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x (n, c_in, h, w), temb (n, temb_channels) or None -> (n, c_out, h, w)."""
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class TemporalConvLayer(nn.Module):
    """ModelScope's temporal convolution: four (GroupNorm, SiLU, [Dropout], Conv3d over frames) stages
    plus identity. The last conv starts at zero, so a fresh layer is the identity.

    Sequential indices are the checkpoint keys (``conv1.2``, ``conv2.3``, ...).
    """

    def __init__(self, channels: int, norm_num_groups: int, dropout: float = 0.1):
        super().__init__()

        def conv3d():
            return nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

        self.conv1 = nn.Sequential(nn.GroupNorm(norm_num_groups, channels), nn.SiLU(), conv3d())
        self.conv2, self.conv3, self.conv4 = (
            nn.Sequential(nn.GroupNorm(norm_num_groups, channels), nn.SiLU(), nn.Dropout(dropout), conv3d())
            for _ in range(3))
        nn.init.zeros_(self.conv4[-1].weight)
        nn.init.zeros_(self.conv4[-1].bias)
        # frame chunking (see videofusion.models.chunking): None = off
        self.frames_per_chunk: int | None = None
        self.pixels_per_chunk: int | None = None

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (b*f, c, h, w) -> (b*f, c, h, w)."""
        bf, c, h, w = x.shape
        pixels = pixels_per_chunk(self.frames_per_chunk, self.pixels_per_chunk, bf, h * w)
        if pixels is not None:
            return self._forward_chunked(dense(x), num_frames, pixels)
        x = x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
        x = x + self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return x.permute(0, 2, 1, 3, 4).reshape(bf, c, h, w)  # (b*f, c, h, w)

    def _forward_chunked(self, x: torch.Tensor, num_frames: int, pixels: int) -> torch.Tensor:
        """The same, ``pixels`` pixels at a time: each stage's GroupNorm statistics first, then the
        stage chunk by chunk into one buffer (a chunk's conv reads only that chunk's frames)."""
        out = torch.empty_like(x)
        src, dst = pixel_view(x, num_frames), pixel_view(out, num_frames)  # (b, f, c, h*w)
        for stage in (self.conv1, self.conv2, self.conv3, self.conv4):
            norm, rest = stage[0], stage[1:]
            mean, rstd = group_stats(src, norm.num_groups, norm.eps, pixels)
            for p in range(0, src.shape[-1], pixels):
                y = group_normalize(src[..., p:p + pixels], mean, rstd, norm.weight, norm.bias)  # (b, f, c, P)
                y = rest(y.permute(0, 2, 1, 3).unsqueeze(-1))  # (b, c, f, P, 1)
                dst[..., p:p + pixels] = y.squeeze(-1).permute(0, 2, 1, 3)  # (b, f, c, P)
            src = dst
        return out.add_(x)


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv. ``padding=0`` pads one pixel right and bottom first (the VAE encoder)."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x (or to ``output_size``) upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """x (n, c, h, w) -> (n, c, 2h, 2w), or (n, c, *output_size) when given."""
        if x.shape[0] >= 64 or x.numel() * 4 > 2**31:
            x = x.contiguous()  # upsample_nearest_nhwc fails on large channels-last inputs (pytorch#141831)
        if output_size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(output_size), mode="nearest")
        return self.conv(x)


class GEGLU(nn.Module):
    """Gated GELU unit (Shazeer 2020): ``a * gelu(gate)`` with ``[a, gate] = proj(x)``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward ``dim -> mult*dim -> dim``."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # index 1 is diffusers' dropout (p=0 in these models), kept so the output layer is ``net.2``
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block: self-attention, a second attention to ``context`` (cross-attention
    when ``context_dim`` is set, else a second self-attention), GEGLU feed-forward; residual each.

    ``chunk_size`` (None = off) runs the feed-forward on slices of ``chunk_size`` along ``chunk_dim``
    (0: batch, 1: tokens): less peak memory, same result.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)
        self.chunk_size: int | None = None
        self.chunk_dim = 0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (b, n, dim), context (b, m, context_dim) or None -> (b, n, dim)."""
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        h = self.norm3(x)
        if self.chunk_size is None:
            return self.ff(h) + x
        return torch.cat([self.ff(part) for part in h.split(self.chunk_size, dim=self.chunk_dim)],
                         dim=self.chunk_dim) + x


class Transformer2DModel(nn.Module):
    """Spatial transformer: each frame's h*w pixels are tokens that attend to each other and to the
    text ``context`` (one block, linear in/out projections, GroupNorm in, residual)."""

    def __init__(self, in_channels: int, heads: int, dim_head: int, context_dim: int, norm_num_groups: int):
        super().__init__()
        inner_dim = heads * dim_head
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner_dim, heads, dim_head, context_dim)])
        self.proj_out = nn.Linear(inner_dim, in_channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (n, c, h, w), context (n, seq, context_dim) -> (n, c, h, w)."""
        n, c, h, w = x.shape
        tokens = self.proj_in(self.norm(x).permute(0, 2, 3, 1).reshape(n, h * w, c))  # (n, h*w, inner)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        return self.proj_out(tokens).reshape(n, h, w, c).permute(0, 3, 1, 2) + x  # (n, c, h, w)


class TransformerTemporalModel(nn.Module):
    """Temporal transformer: at each pixel the ``num_frames`` frames are tokens that attend to each
    other (one block of two self-attentions; GroupNorm over (channels, frames, h, w); residual)."""

    def __init__(self, in_channels: int, heads: int, dim_head: int, norm_num_groups: int):
        super().__init__()
        inner_dim = heads * dim_head
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = nn.Linear(in_channels, inner_dim)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(inner_dim, heads, dim_head)])
        self.proj_out = nn.Linear(inner_dim, in_channels)
        # frame chunking (see videofusion.models.chunking) and FreeNoise windows (videofusion.models.windows)
        self.frames_per_chunk: int | None = None
        self.pixels_per_chunk: int | None = None
        self.temporal_window: tuple[int, int] | None = None  # (window, stride) in frames

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """x (b*f, c, h, w) -> (b*f, c, h, w)."""
        bf, c, h, w = x.shape
        b = bf // num_frames
        pixels = pixels_per_chunk(self.frames_per_chunk, self.pixels_per_chunk, bf, h * w)
        if pixels is not None:
            return self._forward_chunked(dense(x), num_frames, pixels)
        y = x.reshape(b, num_frames, c, h, w).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
        y = self.norm(y).permute(0, 3, 4, 2, 1).reshape(b * h * w, num_frames, c)  # (b*h*w, f, c)
        y = self.proj_out(self._mix(self.proj_in(y)))
        y = y.reshape(b, h, w, num_frames, c).permute(0, 3, 4, 1, 2)  # (b, f, c, h, w)
        return y.reshape(bf, c, h, w) + x  # (b*f, c, h, w)

    def _forward_chunked(self, x: torch.Tensor, num_frames: int, pixels: int) -> torch.Tensor:
        """The same, ``pixels`` pixels at a time (GroupNorm statistics over all of them first)."""
        src = pixel_view(x, num_frames)  # (b, f, c, h*w)
        b, _, c, _ = src.shape
        mean, rstd = group_stats(src, self.norm.num_groups, self.norm.eps, pixels)
        out = torch.empty_like(x)
        dst = pixel_view(out, num_frames)
        for p in range(0, src.shape[-1], pixels):
            part = src[..., p:p + pixels]  # (b, f, c, P)
            n = part.shape[-1]
            y = group_normalize(part, mean, rstd, self.norm.weight, self.norm.bias)
            y = self.proj_in(y.permute(0, 3, 1, 2).reshape(b * n, num_frames, c))  # (b*P, f, inner)
            y = self.proj_out(self._mix(y)).reshape(b, n, num_frames, c).permute(0, 2, 3, 1)  # (b, f, c, P)
            dst[..., p:p + pixels] = y + part
        return out

    def _mix(self, y: torch.Tensor) -> torch.Tensor:
        """The transformer blocks on frame tokens (n, f, inner); with ``temporal_window`` both
        self-attentions of a block see only overlapping windows of frames, fused as in FreeNoise."""
        for block in self.transformer_blocks:
            if self.temporal_window is None or y.shape[1] <= self.temporal_window[0]:
                y = block(y)
                continue

            def attend(t, block=block):  # the block's two self-attentions on one window of frames
                t = block.attn1(block.norm1(t)) + t
                return block.attn2(block.norm2(t)) + t

            y = fuse_windows(attend, y, *self.temporal_window)
            y = block.ff(block.norm3(y)) + y
        return y


# ---------------------------------------------------------------------------------------------
# memory switches over a whole model


def set_forward_chunking(model: nn.Module, chunk_size: int | None, dim: int = 0) -> None:
    """Run every :class:`BasicTransformerBlock` feed-forward in chunks of ``chunk_size`` along ``dim``
    (0 or 1); ``chunk_size=None`` turns chunking off. Exact."""
    if dim not in (0, 1):
        raise ValueError(f"dim must be 0 (batch) or 1 (tokens), got {dim!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    for m in model.modules():
        if isinstance(m, BasicTransformerBlock):
            m.chunk_size, m.chunk_dim = chunk_size, dim


# Layers that streamed offload must keep whole: frame chunking calls them once per chunk (their weights must
# stay resident across the chunks), and the temporal layers read their children's weights directly.
OFFLOAD_UNITS = (ResnetBlock2D, Transformer2DModel, TemporalConvLayer, TransformerTemporalModel)

"""UNet3DConditionModel: the ModelScope text-to-video denoiser (VideoFusion, damo-vilab/text-to-video-ms-1.7b,
zeroscope v2), as a diffusers-compatible module (same config.json keys, same state_dict keys).

A 2-D UNet applied to every frame (frames folded into the batch), with temporal layers that mix
frames at each pixel: every ResNet is followed by a temporal convolution, every spatial
transformer (self + text cross-attention) by a temporal transformer, and one temporal transformer
(``transformer_in``) runs right after ``conv_in``.

Head counts follow diffusers exactly. ``attention_head_dim`` (historically misnamed) is passed
on as the *number of heads* of each block, which the block turns back into heads of
``attention_head_dim`` channels: a block with ``c`` channels has ``c // attention_head_dim`` heads
of ``attention_head_dim`` channels, in its spatial and temporal transformers alike.
``transformer_in`` has 8 heads of ``attention_head_dim`` channels.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..outputs import Output
from .config import ModelConfig, PretrainedModel
from .attention import (SDPA_PROCESSOR, attn_processors, processor_kwargs, set_attention_slice, set_attn_processor,
                        set_fused_projections)
from .chunking import map_rows
from .layers import (
    Downsample2D,
    ResnetBlock2D,
    TemporalConvLayer,
    TimestepEmbedding,
    Transformer2DModel,
    TransformerTemporalModel,
    Upsample2D,
    check_norm_and_activation,
    config_error,
    fourier_filter,
    positive_int,
    set_forward_chunking,
    timestep_embedding,
)

DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")


@dataclass
class UNet3DConfig(ModelConfig):
    """Every key of diffusers' ``UNet3DConditionModel`` config.json, with diffusers' defaults
    (the defaults are the 1.7B ModelScope model except ``sample_size``)."""

    sample_size: int | Sequence[int] | None = None  # latent height/width the model was trained at
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: Sequence[str] = ("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D",
                                       "DownBlock3D")
    up_block_types: Sequence[str] = ("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")
    block_out_channels: Sequence[int] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1
    act_fn: str = "silu"
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1024
    attention_head_dim: int | Sequence[int] = 64  # channels per head, per block if a list
    num_attention_heads: int | Sequence[int] | None = None  # must stay None, as in diffusers
    time_cond_proj_dim: int | None = None

    def __post_init__(self):
        n = len(self.block_out_channels) if isinstance(self.block_out_channels, (list, tuple)) else 0
        if n == 0 or not all(positive_int(c) for c in self.block_out_channels):
            raise config_error("block_out_channels", self.block_out_channels, "a non-empty list of positive ints")
        for key, accepted in (("down_block_types", DOWN_BLOCK_TYPES), ("up_block_types", UP_BLOCK_TYPES)):
            types = getattr(self, key)
            if not isinstance(types, (list, tuple)) or len(types) != n or any(t not in accepted for t in types):
                raise config_error(key, types, f"a list of {n} (len(block_out_channels)) entries from {accepted}")
        for key in ("in_channels", "out_channels", "layers_per_block", "cross_attention_dim"):
            if not positive_int(getattr(self, key)):
                raise config_error(key, getattr(self, key), "a positive int")
        if self.num_attention_heads is not None:
            raise config_error("num_attention_heads", self.num_attention_heads,
                               "None (diffusers rejects it; set attention_head_dim instead)")
        heads = self.head_dims()
        if len(heads) != n or not all(positive_int(d) and d <= c for d, c in zip(heads, self.block_out_channels)):
            raise config_error("attention_head_dim", self.attention_head_dim,
                               f"a positive int, or a list of {n} of them, each at most its block's channels")
        check_norm_and_activation(self.norm_num_groups, self.block_out_channels, self.act_fn)
        if not (isinstance(self.downsample_padding, int) and self.downsample_padding >= 0):
            raise config_error("downsample_padding", self.downsample_padding, "an int >= 0")
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0):
            raise config_error("norm_eps", self.norm_eps, "a positive float")
        if not (isinstance(self.mid_block_scale_factor, (int, float)) and self.mid_block_scale_factor != 0):
            raise config_error("mid_block_scale_factor", self.mid_block_scale_factor, "a non-zero number")
        if self.time_cond_proj_dim is not None and not positive_int(self.time_cond_proj_dim):
            raise config_error("time_cond_proj_dim", self.time_cond_proj_dim, "None or a positive int")

    def head_dims(self) -> list:
        """``attention_head_dim`` per down block (an int repeated, or the list itself)."""
        d = self.attention_head_dim
        return list(d) if isinstance(d, (list, tuple)) else [d] * len(self.block_out_channels)


@dataclass
class UNet3DConditionOutput(Output):
    """``sample`` (batch, out_channels, num_frames, height, width): the model's prediction."""

    sample: torch.Tensor


def block_layers(cfg: UNet3DConfig, in_channels: Sequence[int], out_channels: int, temb_channels: int,
                 head_dim: int | None) -> tuple[nn.ModuleList | None, ...]:
    """A block's ``resnets`` (one per entry of ``in_channels``, each to ``out_channels``), ``temp_convs`` and, with
    ``head_dim``, its spatial (``attentions``) and temporal (``temp_attentions``) transformers (else None, None).

    Created layer by layer (ResNet, temporal conv, transformers), in diffusers' order, so that a model built
    after ``torch.manual_seed(s)`` has diffusers' random weights."""
    groups, layers = cfg.norm_num_groups, ([], [], [], [])
    for channels in in_channels:
        layers[0].append(ResnetBlock2D(channels, out_channels, temb_channels, groups, cfg.norm_eps, cfg.act_fn))
        layers[1].append(TemporalConvLayer(out_channels, groups))
        if head_dim is not None:
            heads = out_channels // head_dim
            layers[2].append(Transformer2DModel(out_channels, heads, head_dim, cfg.cross_attention_dim, groups))
            layers[3].append(TransformerTemporalModel(out_channels, heads, head_dim, groups))
    resnets, temp_convs, attentions, temp_attentions = (nn.ModuleList(layer) for layer in layers)
    return resnets, temp_convs, *((attentions, temp_attentions) if head_dim is not None else (None, None))


class DownBlock3D(nn.Module):
    """``layers`` x (ResNet -> temporal conv [-> spatial transformer -> temporal transformer]), then an
    optional stride-2 conv. With ``head_dim`` it is diffusers' CrossAttnDownBlock3D, else DownBlock3D."""

    def __init__(self, cfg: UNet3DConfig, in_channels: int, out_channels: int, temb_channels: int,
                 head_dim: int | None, add_downsample: bool):
        super().__init__()
        inputs = [in_channels] + [out_channels] * (cfg.layers_per_block - 1)
        self.resnets, self.temp_convs, self.attentions, self.temp_attentions = block_layers(
            cfg, inputs, out_channels, temb_channels, head_dim)
        self.downsamplers = (nn.ModuleList([Downsample2D(out_channels, cfg.downsample_padding)])
                             if add_downsample else None)
        self.frames_per_chunk: int | None = None  # per-frame layers over row chunks (frame chunking)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int):
        """x (b*f, c, h, w) -> (output, skip tensors for the up path, one per layer + downsampler)."""
        skips, rows = [], self.frames_per_chunk
        for i, (resnet, temp_conv) in enumerate(zip(self.resnets, self.temp_convs)):
            x = temp_conv(map_rows(resnet, rows, x, temb), num_frames)
            if self.attentions is not None:
                x = self.temp_attentions[i](map_rows(self.attentions[i], rows, x, context), num_frames)
            skips.append(x)
        if self.downsamplers is not None:
            x = map_rows(self.downsamplers[0], rows, x)
            skips.append(x)
        return x, skips


class UpBlock3D(nn.Module):
    """``layers`` x (concat a skip -> ResNet -> temporal conv [-> spatial -> temporal transformer]), then an
    optional 2x upsample. With ``head_dim`` it is diffusers' CrossAttnUpBlock3D, else UpBlock3D."""

    def __init__(self, cfg: UNet3DConfig, in_channels: int, prev_channels: int, out_channels: int,
                 temb_channels: int, head_dim: int | None, add_upsample: bool, resolution_idx: int = 0):
        super().__init__()
        self.resolution_idx = resolution_idx  # 0 for the deepest up block: FreeU acts on blocks 0 and 1
        # FreeU's factors (enable_freeu), stored on every up block as diffusers stores them; None: off
        self.s1: float | None = None
        self.s2: float | None = None
        self.b1: float | None = None
        self.b2: float | None = None
        num_layers = cfg.layers_per_block + 1
        skip_channels = [in_channels if i == num_layers - 1 else out_channels for i in range(num_layers)]
        inputs = [(prev_channels if i == 0 else out_channels) + skip for i, skip in enumerate(skip_channels)]
        self.resnets, self.temp_convs, self.attentions, self.temp_attentions = block_layers(
            cfg, inputs, out_channels, temb_channels, head_dim)
        self.upsamplers = nn.ModuleList([Upsample2D(out_channels)]) if add_upsample else None
        self.frames_per_chunk: int | None = None  # per-frame layers over row chunks (frame chunking)

    def forward(self, x: torch.Tensor, skips: list, temb: torch.Tensor, context: torch.Tensor,
                num_frames: int, upsample_size: Sequence[int] | None = None) -> torch.Tensor:
        """x (b*f, c, h, w); ``skips`` are consumed last-first, one per layer."""
        rows, freeu = self.frames_per_chunk, self.freeu()
        for i, (resnet, temp_conv) in enumerate(zip(self.resnets, self.temp_convs)):
            def concat_resnet(x, skip, temb, resnet=resnet):
                return resnet(torch.cat([x, skip], dim=1), temb)  # (rows, c + c_skip, h, w) in

            skip = skips[-1 - i]
            if freeu is not None:  # FreeU: amplify half the backbone channels, damp the skip's low frequencies
                s, b = freeu
                half = x.shape[1] // 2
                x = torch.cat([x[:, :half] * b, x[:, half:]], dim=1)  # (b*f, c, h, w)
                skip = fourier_filter(skip, threshold=1, scale=s)
            x = temp_conv(map_rows(concat_resnet, rows, x, skip, temb), num_frames)
            if self.attentions is not None:
                x = self.temp_attentions[i](map_rows(self.attentions[i], rows, x, context), num_frames)
        if self.upsamplers is not None:
            x = map_rows(lambda x: self.upsamplers[0](x, upsample_size), rows, x)
        return x

    def freeu(self) -> tuple[float, float] | None:
        """FreeU's (skip scale s, backbone scale b) at this block: (s1, b1) in the deepest up block, (s2, b2) in
        the next; None in the others, or when off (a factor None or 0), as diffusers decides."""
        if not (self.s1 and self.s2 and self.b1 and self.b2) or self.resolution_idx not in (0, 1):
            return None
        return (self.s1, self.b1) if self.resolution_idx == 0 else (self.s2, self.b2)


class UNetMidBlock3DCrossAttn(nn.Module):
    """ResNet -> temporal conv -> spatial transformer -> temporal transformer -> ResNet -> temporal conv."""

    def __init__(self, cfg: UNet3DConfig, channels: int, temb_channels: int, head_dim: int):
        super().__init__()
        groups, heads = cfg.norm_num_groups, channels // head_dim

        def resnet() -> ResnetBlock2D:
            return ResnetBlock2D(channels, channels, temb_channels, groups, cfg.norm_eps, cfg.act_fn,
                                 output_scale_factor=cfg.mid_block_scale_factor)

        # created in diffusers' order (seeded random init gives its weights): ResNet, temporal conv, the two
        # transformers, ResNet, temporal conv
        resnet_0, temp_conv_0 = resnet(), TemporalConvLayer(channels, groups)
        attention = Transformer2DModel(channels, heads, head_dim, cfg.cross_attention_dim, groups)
        temp_attention = TransformerTemporalModel(channels, heads, head_dim, groups)
        self.resnets = nn.ModuleList([resnet_0, resnet()])
        self.temp_convs = nn.ModuleList([temp_conv_0, TemporalConvLayer(channels, groups)])
        self.attentions = nn.ModuleList([attention])
        self.temp_attentions = nn.ModuleList([temp_attention])
        self.frames_per_chunk: int | None = None  # per-frame layers over row chunks (frame chunking)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor, num_frames: int) -> torch.Tensor:
        rows = self.frames_per_chunk
        x = self.temp_convs[0](map_rows(self.resnets[0], rows, x, temb), num_frames)
        x = self.temp_attentions[0](map_rows(self.attentions[0], rows, x, context), num_frames)
        return self.temp_convs[1](map_rows(self.resnets[1], rows, x, temb), num_frames)


class UNet3DConditionModel(PretrainedModel):
    """The text-conditioned video denoiser. Build from a :class:`UNet3DConfig`, a config.json dict, or
    keyword arguments (``UNet3DConditionModel(block_out_channels=(32, 64), ...)``)."""

    config_class = UNet3DConfig
    _supports_gradient_checkpointing = True  # diffusers' class says False; ours checkpoints each block

    def __init__(self, config: UNet3DConfig | dict | None = None, **kwargs):
        super().__init__()
        cfg = self.config = self.make_config(config, **kwargs)
        channels, head_dims = list(cfg.block_out_channels), cfg.head_dims()
        n, temb = len(channels), channels[0] * 4
        self.gradient_checkpointing = False

        self.conv_in = nn.Conv2d(cfg.in_channels, channels[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(channels[0], temb, cfg.act_fn, cfg.time_cond_proj_dim)
        # diffusers cannot build a list attention_head_dim here; we use the first block's entry
        self.transformer_in = TransformerTemporalModel(channels[0], 8, head_dims[0], cfg.norm_num_groups)

        self.down_blocks = nn.ModuleList(
            DownBlock3D(cfg, channels[max(i - 1, 0)], channels[i], temb,
                        head_dims[i] if kind == "CrossAttnDownBlock3D" else None, add_downsample=i < n - 1)
            for i, kind in enumerate(cfg.down_block_types))
        self.up_blocks = nn.ModuleList()  # registered before mid_block, built after it: diffusers' module order
        self.mid_block = UNetMidBlock3DCrossAttn(cfg, channels[-1], temb, head_dims[-1])
        rev_channels, rev_heads = channels[::-1], head_dims[::-1]
        self.up_blocks.extend(
            UpBlock3D(cfg, in_channels=rev_channels[min(i + 1, n - 1)], prev_channels=rev_channels[max(i - 1, 0)],
                      out_channels=rev_channels[i], temb_channels=temb,
                      head_dim=rev_heads[i] if kind == "CrossAttnUpBlock3D" else None, add_upsample=i < n - 1,
                      resolution_idx=i)
            for i, kind in enumerate(cfg.up_block_types))

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, channels[0], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(channels[0], cfg.out_channels, 3, padding=1)
        self.frames_per_chunk: int | None = None

    # ---- memory switches -------------------------------------------------------------------

    def set_attention_slice(self, slice_size: str | int | Sequence[int | None] | None) -> None:
        """Attention in slices over batch*heads (exact, less memory). ``None`` off, ``"auto"`` half the
        heads, ``"max"`` one at a time, an int that many per slice, or a list with one per layer."""
        set_attention_slice(self, slice_size)

    def enable_forward_chunking(self, chunk_size: int | None = None, dim: int = 0) -> None:
        """Feed-forward layers in chunks of ``chunk_size`` (default 1) along ``dim`` (0 batch, 1 tokens). Exact."""
        set_forward_chunking(self, chunk_size or 1, dim)

    def disable_forward_chunking(self) -> None:
        set_forward_chunking(self, None)

    def enable_frame_chunking(self, frames_per_chunk: int = 8, pixels_per_chunk: int | None = None) -> None:
        """Run the per-frame layers over chunks of ``frames_per_chunk`` rows of the (batch * frames)
        axis (classifier-free guidance's two halves included) and the temporal layers over chunks of
        ``pixels_per_chunk`` pixels (default: as many as make ``frames_per_chunk`` frames' worth of
        tokens), so a layer's working memory stops growing with ``num_frames``. Exact up to rounding;
        see :mod:`videofusion.models.chunking`."""
        if not positive_int(frames_per_chunk):
            raise ValueError(f"frames_per_chunk: must be a positive int, got {frames_per_chunk!r}")
        if pixels_per_chunk is not None and not positive_int(pixels_per_chunk):
            raise ValueError(f"pixels_per_chunk: must be a positive int or None, got {pixels_per_chunk!r}")
        self._set_chunking(frames_per_chunk, pixels_per_chunk)

    def disable_frame_chunking(self) -> None:
        self._set_chunking(None, None)

    def _set_chunking(self, frames_per_chunk: int | None, pixels_per_chunk: int | None) -> None:
        self.frames_per_chunk = frames_per_chunk
        for m in self.modules():
            if isinstance(m, (DownBlock3D, UpBlock3D, UNetMidBlock3DCrossAttn)):
                m.frames_per_chunk = frames_per_chunk
            elif isinstance(m, (TransformerTemporalModel, TemporalConvLayer)):
                m.frames_per_chunk, m.pixels_per_chunk = frames_per_chunk, pixels_per_chunk

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al. 2023): in the two deepest up blocks, multiply half of the backbone's channels by
        ``b1`` / ``b2`` and the lowest frequencies of the skip features by ``s1`` / ``s2``. No training, no
        weights; diffusers' parameters and numbers. It stays off unless all four are non-zero, as in diffusers."""
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:
            block.s1 = block.s2 = block.b1 = block.b2 = None

    @property
    def attn_processors(self) -> dict:
        """The processor of every attention layer, keyed ``"<layer name>.processor"`` as in diffusers."""
        return attn_processors(self)

    def set_attn_processor(self, processor) -> None:
        """One processor for every attention layer, or a dict keyed as :attr:`attn_processors`; a processor
        written for diffusers' ``Attention`` runs unchanged (see :mod:`videofusion.models.attention`)."""
        set_attn_processor(self, processor)

    def set_default_attn_processor(self) -> None:
        """Every layer back on the built-in attention (PyTorch's fused SDPA)."""
        set_attn_processor(self, SDPA_PROCESSOR)

    def fuse_qkv_projections(self) -> None:
        """One matrix multiply for q, k, v of every self-attention (k, v of cross-attention); same outputs up
        to rounding, inference only (see :meth:`~videofusion.models.attention.Attention.fuse_projections`)."""
        set_fused_projections(self, True)

    def unfuse_qkv_projections(self) -> None:
        set_fused_projections(self, False)

    def set_temporal_window(self, window: int | None, stride: int | None = None) -> None:
        """Temporal attention only within overlapping windows of ``window`` frames every ``stride``
        frames, outputs fused as in FreeNoise (see :mod:`videofusion.long_video`); ``None`` turns it off.
        The pipeline sets it for a call from its ``long_video`` option."""
        value = None
        if window is not None:
            if not positive_int(window) or not positive_int(stride) or stride > window:
                raise ValueError(f"window, stride: need ints with 1 <= stride <= window, got {window!r}, {stride!r}")
            value = (window, stride)
        for m in self.modules():
            if isinstance(m, TransformerTemporalModel):
                m.temporal_window = value

    def _run(self, block: nn.Module, *args):
        """``block(*args)``; with gradient checkpointing on (``enable_gradient_checkpointing``), in training mode
        with grad, its activations are recomputed in the backward pass instead of stored."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # ---- forward ---------------------------------------------------------------------------

    def _timesteps(self, timestep, batch: int, num_frames: int, device: torch.device) -> torch.Tensor:
        """int, float, 0-d or (batch,)/(1,) tensor -> (batch,) tensor on ``device``; a (batch, num_frames)
        tensor (one timestep per frame) -> (batch * num_frames,), frame-major within each video."""
        if isinstance(timestep, bool) or not isinstance(timestep, (numbers.Real, torch.Tensor)):
            raise TypeError(f"timestep must be an int, a float or a tensor, got {type(timestep).__name__}")
        if not torch.is_tensor(timestep):
            integral = isinstance(timestep, numbers.Integral)
            timestep = torch.tensor([timestep], dtype=torch.int64 if integral else torch.float64)
        per_frame = timestep.ndim == 2 and tuple(timestep.shape) == (batch, num_frames)
        if not per_frame and (timestep.ndim > 1 or timestep.numel() not in (1, batch)):
            raise ValueError(f"timestep: expected a scalar, a ({batch},) tensor or a ({batch}, {num_frames}) "
                             f"tensor (one per frame), got shape {tuple(timestep.shape)}")
        if device.type == "mps" and timestep.dtype == torch.float64:
            timestep = timestep.float()
        if per_frame:
            return timestep.reshape(-1).to(device)  # (b*f,)
        return timestep.reshape(-1).to(device).expand(batch)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                encoder_hidden_states: torch.Tensor, timestep_cond: torch.Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                return_dict: bool = True) -> UNet3DConditionOutput | tuple[torch.Tensor]:
        """Predict from a noisy video latent.

        sample: (batch, in_channels, num_frames, height, width); any height/width (sizes that are not
            a multiple of 2**(blocks-1) are upsampled back to the skip sizes, as in diffusers).
        timestep: diffusion step, an int, a float, a 0-d tensor, a (batch,) tensor, or a (batch, num_frames)
            tensor: one step per frame (FIFO-Diffusion's queue holds frames at different noise levels).
        encoder_hidden_states: (batch, seq, cross_attention_dim) text embeddings.
        timestep_cond: (batch, time_cond_proj_dim), only when the config sets time_cond_proj_dim (shared
            by the frames of a video when the timesteps are per frame).
        cross_attention_kwargs: keyword arguments for the attention processors set with
            :meth:`set_attn_processor` (every layer gets them); None or empty with the built-in attention.
        Returns ``UNet3DConditionOutput(sample)`` or ``(sample,)`` with sample
        (batch, out_channels, num_frames, height, width).
        """
        cfg = self.config

        def shape(t):
            return tuple(t.shape) if torch.is_tensor(t) else type(t).__name__

        if not torch.is_tensor(sample) or sample.ndim != 5 or sample.shape[1] != cfg.in_channels:
            raise ValueError(f"sample: expected a (batch, {cfg.in_channels}, num_frames, height, width) tensor, "
                             f"got {shape(sample)}")
        b, _, num_frames, h, w = sample.shape
        ehs = encoder_hidden_states
        if not torch.is_tensor(ehs) or ehs.ndim != 3 or ehs.shape[0] != b or ehs.shape[2] != cfg.cross_attention_dim:
            raise ValueError(f"encoder_hidden_states: expected a ({b}, seq, {cfg.cross_attention_dim}) tensor, "
                             f"got {shape(ehs)}")
        if timestep_cond is not None and cfg.time_cond_proj_dim is None:
            raise ValueError("timestep_cond: only accepted when the config sets time_cond_proj_dim")

        with processor_kwargs(self, cross_attention_kwargs):  # checked before any layer runs
            # 1. time: sinusoids (float32) -> MLP in the model's dtype, one row per frame
            steps = self._timesteps(timestep, b, num_frames, sample.device)  # (b,) or (b*f,) per frame
            per_frame = steps.shape[0] != b
            if per_frame and timestep_cond is not None:
                timestep_cond = timestep_cond.repeat_interleave(num_frames, dim=0)  # (b*f, time_cond_proj_dim)
            t = timestep_embedding(steps, cfg.block_out_channels[0])
            emb = self.time_embedding(t.to(self.time_embedding.linear_1.weight.dtype), timestep_cond)
            if not per_frame:
                emb = emb.repeat_interleave(num_frames, dim=0)  # (b*f, temb)
            context = encoder_hidden_states.repeat_interleave(num_frames, dim=0)  # (b*f, seq, d)

            # 2. frames into the batch
            x = sample.permute(0, 2, 1, 3, 4).reshape(b * num_frames, -1, h, w)  # (b*f, c, h, w)
            x = map_rows(self.conv_in, self.frames_per_chunk, x)
            x = self._run(self.transformer_in, x, num_frames)

            # 3. down: keep every intermediate for the skip connections
            skips = [x]
            for block in self.down_blocks:
                x, block_skips = self._run(block, x, emb, context, num_frames)
                skips += block_skips

            # 4. mid
            x = self._run(self.mid_block, x, emb, context, num_frames)

            # 5. up: each block takes as many skips as it has resnets; non-multiple sizes upsample to the skip size
            factor = 2 ** (len(self.up_blocks) - 1)
            force_size = h % factor != 0 or w % factor != 0
            for i, block in enumerate(self.up_blocks):
                block_skips, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
                size = tuple(skips[-1].shape[2:]) if force_size and i < len(self.up_blocks) - 1 else None
                x = self._run(block, x, block_skips, emb, context, num_frames, size)

            # 6. out, frames back out of the batch
            # (not chunked: by now every skip is consumed, so its temporaries are not the peak, and streamed
            # offload could not predict two blocks alternating chunk by chunk)
            x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
            x = x.reshape(b, num_frames, -1, *x.shape[2:]).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
        return UNet3DConditionOutput(sample=x) if return_dict else (x,)

"""The original release's UNet (``text2video_pytorch_model.pth``, ModelScope's ``UNetSD``; zeroscope v2's
UNet files share it) -> our :class:`~videofusion.models.UNet3DConditionModel` config and keys.

The original layout, for ``L`` residual blocks per level (``unet_res_blocks``)::

    time_embed.{0,2}                         -> time_embedding.linear_{1,2}
    input_blocks.0.0 / input_blocks.0.1      -> conv_in / transformer_in (temporal transformer)
    input_blocks.{1 + i*(L+1) + j}.{0,1,2}   -> down_blocks.i: resnets.j (+ .temopral_conv -> temp_convs.j),
                                                attentions.j, temp_attentions.j
    input_blocks.{1 + i*(L+1) + L}.op        -> down_blocks.i.downsamplers.0.conv
    middle_block.{0,1,2,3}                   -> mid_block: resnets.0 (+ temp_convs.0), attentions.0,
                                                temp_attentions.0, resnets.1 (+ temp_convs.1)
    output_blocks.{i*(L+1) + j}.{0,1,2}      -> up_blocks.i: resnets.j (+ temp_convs.j), attentions.j,
                                                temp_attentions.j; the last layer's upsampler (index 3, or 1
                                                in a level without attention) -> upsamplers.0.conv
    out.{0,2}                                -> conv_norm_out / conv_out

A residual block's ``in_layers.{0,2}``, ``emb_layers.1``, ``out_layers.{0,3}`` and ``skip_connection`` are
our ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2`` and ``conv_shortcut``; its temporal
convolution keeps the checkpoint's own spelling ``temopral_conv``. The temporal transformers' ``proj_in`` /
``proj_out`` are 1-D convolutions there (o, i, 1) and linear layers here (o, i); everything else inside the
transformers has our names already.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from ..io.loading import empty_parameters
from ..models import UNet3DConditionModel, UNet3DConfig
from .keys import Source, same, squeezed

# The original pipeline generates 256x256 videos (its default out_height / out_width)
ORIGINAL_SIZE = 256

# model_cfg keys: the published configuration.json's spelling first, then the shorter one some copies use
MODEL_CFG_KEYS = {
    "in_dim": ("unet_in_dim", "in_dim"),
    "dim": ("unet_dim", "dim"),
    "context_dim": ("unet_context_dim", "context_dim"),
    "out_dim": ("unet_out_dim", "out_dim"),
    "dim_mult": ("unet_dim_mult", "dim_mult"),
    "head_dim": ("unet_head_dim", "head_dim"),
    "res_blocks": ("unet_res_blocks", "num_res_blocks"),
    "attn_scales": ("unet_attn_scales", "attn_scales"),
    "num_heads": ("unet_num_heads", "num_heads"),
}
TRANSFORMER_IN_HEADS = 8  # diffusers' UNet3DConditionModel builds transformer_in with 8 heads, always
RESNET_LEAVES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_TEMPORAL_PROJECTION = re.compile(r"(transformer_in|.*\.temp_attentions\.\d+)\.proj_(in|out)\.weight")


def _value(model_cfg: Mapping[str, Any], name: str, source: str, default: Any = ...) -> tuple[str, Any]:
    spellings = MODEL_CFG_KEYS[name]
    for key in spellings:
        if key in model_cfg:
            return key, model_cfg[key]
    if default is not ...:
        return spellings[0], default
    raise ValueError(f"{source}: model.model_cfg has no {spellings[0]!r} (nor {spellings[1]!r}); it holds "
                     f"{sorted(model_cfg)}")


def _bad(source: str, key: str, value: Any, accepted: str) -> ValueError:
    return ValueError(f"{source}: model.model_cfg.{key} must be {accepted}, got {value!r}")


def _positive_int(model_cfg: Mapping[str, Any], name: str, source: str) -> int:
    key, value = _value(model_cfg, name, source)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(source, key, value, "a positive integer")
    return value


def _is_true(value: Any) -> bool | None:
    """The original reads ``temporal_attention`` as the string "True"; accept booleans too."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(str(value).strip().lower())


def unet_config(model_cfg: Mapping[str, Any], source: str, vae_scale_factor: int = 8) -> dict[str, Any]:
    """Our (= diffusers') UNet ``config.json`` dict from the original ``configuration.json``'s
    ``model.model_cfg``. ``sample_size`` is the original pipeline's 256 pixels in latents
    (256 // ``vae_scale_factor``). ValueError naming ``source`` and the key for a value the diffusers layout
    cannot hold (a first ``dim_mult`` other than 1, ``unet_num_heads`` other than 8, no temporal attention, a
    head size that does not divide a level's channels)."""
    dim = _positive_int(model_cfg, "dim", source)
    in_dim = _positive_int(model_cfg, "in_dim", source)
    out_dim = _positive_int(model_cfg, "out_dim", source)
    context_dim = _positive_int(model_cfg, "context_dim", source)
    head_dim = _positive_int(model_cfg, "head_dim", source)
    res_blocks = _positive_int(model_cfg, "res_blocks", source)
    key, mult = _value(model_cfg, "dim_mult", source)
    if not isinstance(mult, (list, tuple)) or not mult or not all(
            isinstance(m, int) and not isinstance(m, bool) and m > 0 for m in mult):
        raise _bad(source, key, mult, "a non-empty list of positive integers")
    if mult[0] != 1:
        raise _bad(source, key, mult, "a list starting with 1 (the first level runs at unet_dim channels in the "
                                      "diffusers layout)")
    key, heads = _value(model_cfg, "num_heads", source, default=dim // 32)  # the original's own default
    if heads != TRANSFORMER_IN_HEADS:
        raise _bad(source, key, heads, f"{TRANSFORMER_IN_HEADS} (the heads of the first temporal transformer, "
                                       "fixed in the diffusers layout)")
    temporal = _is_true(model_cfg.get("temporal_attention", True))
    if temporal is not True:
        raise _bad(source, "temporal_attention", model_cfg.get("temporal_attention"),
                   '"True" (the diffusers layout always has temporal attention)')
    key, scales = _value(model_cfg, "attn_scales", source)
    if not isinstance(scales, (list, tuple)) or not all(isinstance(s, (int, float)) for s in scales):
        raise _bad(source, key, scales, "a list of numbers (1, 0.5, 0.25, ...: the levels with attention)")

    channels = [dim * m for m in mult]
    attention = [1 / 2 ** i in scales for i in range(len(mult))]  # level i runs at scale 1 / 2**i
    for c, has in zip(channels + [channels[-1]], attention + [True]):  # the middle block always attends
        if has and c % head_dim:
            raise _bad(source, MODEL_CFG_KEYS["head_dim"][0], head_dim,
                       f"a divisor of every attending level's channels {channels}")
    down = ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attention]
    up = ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in attention[::-1]]
    return {"_class_name": "UNet3DConditionModel", "act_fn": "silu", "attention_head_dim": head_dim,
            "block_out_channels": channels, "cross_attention_dim": context_dim, "down_block_types": down,
            "in_channels": in_dim, "layers_per_block": res_blocks, "norm_eps": 1e-05, "norm_num_groups": 32,
            "out_channels": out_dim, "sample_size": ORIGINAL_SIZE // vae_scale_factor, "up_block_types": up}


def _place(resnet: str, spatial: str, temporal: str, kind: str, rest: str) -> str:
    """A layer of ours (``kind``: resnets, temp_convs, attentions, temp_attentions; ``rest``: the key inside it)
    -> its original name, given where the original holds the step's residual block and transformers."""
    if kind == "resnets":
        leaf, _, tail = rest.partition(".")
        return f"{resnet}.{RESNET_LEAVES[leaf]}.{tail}"
    return {"temp_convs": f"{resnet}.temopral_conv", "attentions": spatial, "temp_attentions": temporal}[kind] \
        + "." + rest


def _step(block: str, kind: str, rest: str) -> str:
    """A down/up block's step is one ModuleList there: [residual block, spatial, temporal transformer, ...]."""
    return _place(f"{block}.0", f"{block}.1", f"{block}.2", kind, rest)


def original_key(key: str, config: UNet3DConfig) -> str:
    """Our state-dict ``key`` -> the original checkpoint's name for it."""
    per_level = config.layers_per_block + 1
    parts = key.split(".")
    head = parts[0]

    def rest(n: int) -> str:  # the key inside the n-th module down
        return ".".join(parts[n:])

    if head in ("conv_in", "transformer_in", "conv_norm_out", "conv_out"):
        return {"conv_in": "input_blocks.0.0", "transformer_in": "input_blocks.0.1", "conv_norm_out": "out.0",
                "conv_out": "out.2"}[head] + "." + rest(1)
    if head == "time_embedding":
        if parts[1] not in ("linear_1", "linear_2"):  # e.g. a distilled UNet's cond_proj
            raise ValueError(f"{key}: the original release has no such layer")
        return {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[parts[1]] + "." + rest(2)
    if head == "down_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.i.downsamplers.0.conv.weight
            return f"input_blocks.{1 + i * per_level + config.layers_per_block}.op.{rest(5)}"
        return _step(f"input_blocks.{1 + i * per_level + int(parts[3])}", kind, rest(4))
    if head == "mid_block":  # middle_block: [residual block, spatial, temporal transformer, residual block]
        return _place(f"middle_block.{3 * int(parts[2])}", "middle_block.1", "middle_block.2", parts[1], rest(3))
    if head == "up_blocks":
        i, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # up_blocks.i.upsamplers.0.conv.weight
            position = 3 if config.up_block_types[i].startswith("CrossAttn") else 1
            return f"output_blocks.{i * per_level + config.layers_per_block}.{position}.{rest(4)}"
        return _step(f"output_blocks.{i * per_level + int(parts[3])}", kind, rest(4))
    raise ValueError(f"UNet key {key!r} has no place in the original layout")


def unet_sources(config: UNet3DConfig, shapes: Mapping[str, Any]) -> dict[str, Source]:
    """``{our key: Source}`` for a UNet of ``config`` whose state dict has ``shapes``."""
    table = {}
    for key, shape in shapes.items():
        name = original_key(key, config)
        table[key] = squeezed(name, shape, 1) if _TEMPORAL_PROJECTION.fullmatch(key) else same(name, shape)
    return table


def empty_unet(config: Mapping[str, Any]) -> tuple[UNet3DConditionModel, dict[str, Source]]:
    """Our UNet built from ``config`` with its parameters on the meta device (no memory), and its key table."""
    with empty_parameters():
        model = UNet3DConditionModel(dict(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return model, unet_sources(model.config, shapes)

"""The original release's autoencoder (``VQGAN_autoencoder.pth``: despite the name a KL autoencoder in the
latent-diffusion layout, stored under ``first_stage_model.`` inside a whole latent-diffusion checkpoint)
-> our :class:`~videofusion.models.AutoencoderKL` config and keys.

The original code fixes the autoencoder's settings in Python, not in ``configuration.json``, so the config
is read from the weights' shapes. The layout, for ``n`` levels::

    encoder.down.i.block.j / .downsample.conv   -> encoder.down_blocks.i.resnets.j / .downsamplers.0.conv
    decoder.up.i.block.j / .upsample.conv       -> decoder.up_blocks.(n-1-i).resnets.j / .upsamplers.0.conv
    {en,de}coder.mid.block_1 / block_2          -> {en,de}coder.mid_block.resnets.0 / resnets.1
    {en,de}coder.mid.attn_1.{norm,q,k,v,proj_out} -> mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}
    {en,de}coder.norm_out                       -> {en,de}coder.conv_norm_out

A residual block's ``nin_shortcut`` is our ``conv_shortcut``; the attention's 1x1 convolutions
(c, c, 1, 1) are our linear layers (c, c). ``conv_in``, ``conv_out``, ``quant_conv`` and ``post_quant_conv``
keep their names.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..io.loading import empty_parameters
from ..models import AutoencoderKL, VAEConfig
from .keys import Source, same, squeezed

PREFIX = "first_stage_model."  # the autoencoder inside a latent-diffusion checkpoint
SCALING_FACTOR = 0.18215  # the original pipeline's latent scale
SAMPLE_SIZE = 512  # as the published diffusers folder says (the image size the autoencoder was trained for)
NORM_GROUPS = 32  # the original's GroupNorm, fixed
_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
_SHAPE_KEYS = ("encoder.conv_in.weight", "decoder.conv_out.weight", "post_quant_conv.weight")


def autoencoder_weights(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The autoencoder's tensors of a file: those under ``first_stage_model.`` (prefix dropped), or the whole
    dict when it is the autoencoder alone."""
    inner = {k[len(PREFIX):]: v for k, v in state_dict.items() if k.startswith(PREFIX)}
    return inner or dict(state_dict)


def vae_config(state_dict: Mapping[str, torch.Tensor], path: str) -> dict[str, Any]:
    """Our (= diffusers') ``AutoencoderKL`` config.json dict, read from the autoencoder's weight shapes
    (:func:`autoencoder_weights` of the file). ValueError naming ``path`` when a key that gives the shape
    is absent."""
    needed = [k for k in _SHAPE_KEYS + ("encoder.down.0.block.0.conv1.weight",) if k not in state_dict]
    if needed:
        raise ValueError(f"{path}: the autoencoder's shape cannot be read: no {', '.join(needed)}")
    levels = sorted({int(m[1]) for k in state_dict if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    layers = len({m[1] for k in state_dict if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))})
    channels = []
    for i in levels:
        key = f"encoder.down.{i}.block.0.conv1.weight"
        if key not in state_dict:
            raise ValueError(f"{path}: the autoencoder's shape cannot be read: no {key}")
        channels.append(int(state_dict[key].shape[0]))
    n = len(channels)
    return {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": channels,
            "down_block_types": ["DownEncoderBlock2D"] * n,
            "in_channels": int(state_dict["encoder.conv_in.weight"].shape[1]),
            "latent_channels": int(state_dict["post_quant_conv.weight"].shape[1]), "layers_per_block": layers,
            "norm_num_groups": NORM_GROUPS, "out_channels": int(state_dict["decoder.conv_out.weight"].shape[0]),
            "sample_size": SAMPLE_SIZE, "scaling_factor": SCALING_FACTOR, "up_block_types": ["UpDecoderBlock2D"] * n}


def _inside(rest: list[str]) -> str:
    """A resnet's or the mid attention's key inside the block -> the original's."""
    if rest[0] == "conv_shortcut":
        rest = ["nin_shortcut"] + rest[1:]
    elif rest[0] in _ATTENTION:
        rest = [_ATTENTION[rest[0]]] + rest[2 if rest[0] == "to_out" else 1:]  # to_out.0.weight -> proj_out.weight
    return ".".join(rest)


def original_key(key: str, levels: int) -> str:
    """Our state-dict ``key`` -> the original autoencoder's name for it (without ``first_stage_model.``)."""
    parts = key.split(".")
    coder = parts[0]
    if coder not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    kind = parts[1]
    if kind == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    if kind == "mid_block":  # mid_block.resnets.j.* / mid_block.attentions.0.*
        place = f"block_{int(parts[3]) + 1}" if parts[2] == "resnets" else "attn_1"
        return f"{coder}.mid.{place}.{_inside(parts[4:])}"
    if kind in ("down_blocks", "up_blocks"):
        i = int(parts[2])
        level, name = (i, "down") if kind == "down_blocks" else (levels - 1 - i, "up")
        if parts[3] in ("downsamplers", "upsamplers"):  # ...samplers.0.conv.weight
            return f"{coder}.{name}.{level}.{parts[3][:-2]}.{'.'.join(parts[5:])}"
        return f"{coder}.{name}.{level}.block.{parts[4]}.{_inside(parts[5:])}"
    return key  # conv_in, conv_out


def vae_sources(config: VAEConfig, shapes: Mapping[str, Any]) -> dict[str, Source]:
    """``{our key: Source}`` for an autoencoder of ``config`` whose state dict has ``shapes``."""
    levels = len(config.block_out_channels)
    table = {}
    for key, shape in shapes.items():
        name = original_key(key, levels)
        is_conv = ".attentions." in key and key.endswith("weight") and len(shape) == 2  # 1x1 conv there
        table[key] = squeezed(name, shape, 2) if is_conv else same(name, shape)
    return table


def empty_vae(config: Mapping[str, Any]) -> tuple[AutoencoderKL, dict[str, Source]]:
    """Our autoencoder built from ``config`` with its parameters on the meta device, and its key table."""
    with empty_parameters():
        model = AutoencoderKL(dict(config))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return model, vae_sources(model.config, shapes)

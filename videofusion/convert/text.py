"""The original release's text encoder (``open_clip_pytorch_model.bin``: a whole OpenCLIP ViT-H-14, image tower
included) -> transformers' ``CLIPTextModel`` giving the embeddings the original pipeline used.

The original pipeline runs OpenCLIP's text tower up to its penultimate layer, then the final layer norm:
tokens + positions -> residual blocks 0 .. L-2 (causal attention) -> ``ln_final``. A ``CLIPTextModel``
with ``L - 1`` layers computes exactly that as its ``last_hidden_state``, so the last block's weights, the
image tower, ``text_projection`` and ``logit_scale`` are left out. The layout::

    token_embedding.weight / positional_embedding -> embeddings.token_embedding.weight /
                                                     embeddings.position_embedding.weight
    transformer.resblocks.i.attn.in_proj_{weight,bias} (q, k, v stacked) -> encoder.layers.i.self_attn.{q,k,v}_proj
    transformer.resblocks.i.attn.out_proj          -> encoder.layers.i.self_attn.out_proj
    transformer.resblocks.i.{ln_1,ln_2}            -> encoder.layers.i.{layer_norm1,layer_norm2}
    transformer.resblocks.i.mlp.{c_fc,c_proj}      -> encoder.layers.i.mlp.{fc1,fc2}
    ln_final                                       -> final_layer_norm

OpenCLIP's text towers use heads of 64 channels (ViT-H-14: width 1024, 16 heads) and exact GELU; the
weights do not record the head count, so it is width / 64.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from ..io.loading import empty_parameters
from .keys import Source, rows, same

HEAD_SIZE = 64
_BLOCK = re.compile(r"transformer\.resblocks\.(\d+)\.")
_LEAVES = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2",
           "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_UNUSED_TOP = ("logit_scale", "text_projection", "attn_mask")  # CLIP's, not the text tower's hidden states'


def file_layers(state_dict: Mapping[str, torch.Tensor]) -> int:
    """The number of residual blocks of the text tower in the file."""
    found = {int(m[1]) for k in state_dict if (m := _BLOCK.match(k))}
    return max(found) + 1 if found else 0


def text_config(state_dict: Mapping[str, torch.Tensor], path: str) -> dict[str, Any]:
    """transformers' ``CLIPTextConfig`` dict (the published text_encoder/config.json's keys and values) for
    the penultimate-layer encoder of the OpenCLIP text tower in ``state_dict``, read from its shapes.
    ValueError naming ``path`` when the tower's shape cannot be read."""
    needed = [k for k in ("token_embedding.weight", "positional_embedding",
                          "transformer.resblocks.0.mlp.c_fc.weight") if k not in state_dict]
    if needed:
        raise ValueError(f"{path}: the text tower's shape cannot be read: no {', '.join(needed)}")
    layers = file_layers(state_dict)
    if layers < 2:
        raise ValueError(f"{path}: the text tower has {layers} residual block(s); the original pipeline reads the "
                         "penultimate one, so it needs at least 2")
    vocab, width = (int(n) for n in state_dict["token_embedding.weight"].shape)
    heads = max(width // HEAD_SIZE, 1)
    if width % heads:
        raise ValueError(f"{path}: text width {width} does not split into heads of {HEAD_SIZE} channels")
    # the constant values are those of the published text_encoder/config.json
    return {"architectures": ["CLIPTextModel"], "attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0,
            "eos_token_id": 2, "hidden_act": "gelu", "hidden_size": width, "initializer_factor": 1.0,
            "initializer_range": 0.02,
            "intermediate_size": int(state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "layer_norm_eps": 1e-05, "max_position_embeddings": int(state_dict["positional_embedding"].shape[0]),
            "model_type": "clip_text_model", "num_attention_heads": heads, "num_hidden_layers": layers - 1,
            "pad_token_id": 1, "projection_dim": 512, "vocab_size": vocab}


def is_unused(key: str, layers_in_file: int) -> bool:
    """Keys of the file the text encoder leaves out: the image tower, CLIP's projection and scale, and the
    last residual block (the original reads the penultimate layer)."""
    if key.startswith("visual.") or key in _UNUSED_TOP:
        return True
    m = _BLOCK.match(key)
    return bool(m) and int(m[1]) == layers_in_file - 1


def original_key(key: str) -> tuple[str, int | None]:
    """Our ``CLIPTextModel`` key (without transformers 4's ``text_model.`` prefix) -> the OpenCLIP name, and
    for q/k/v the row block (0, 1, 2) of the stacked ``in_proj`` it is."""
    if key.startswith("embeddings."):
        return {"embeddings.token_embedding.weight": "token_embedding.weight",
                "embeddings.position_embedding.weight": "positional_embedding"}[key], None
    if key.startswith("final_layer_norm."):
        return "ln_final." + key.split(".", 1)[1], None
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if not m:
        raise ValueError(f"text encoder key {key!r} has no place in the OpenCLIP layout")
    block, inner, kind = f"transformer.resblocks.{m[1]}", m[2], m[3]
    qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
    if inner in qkv:
        return f"{block}.attn.in_proj_{kind}", qkv[inner]
    ours_to_theirs = {v: k for k, v in _LEAVES.items()}
    return f"{block}.{ours_to_theirs[inner]}.{kind}", None


def text_sources(shapes: Mapping[str, Any]) -> dict[str, Source]:
    """``{our key: Source}`` for a ``CLIPTextModel`` whose state dict has ``shapes``."""
    table = {}
    for key, shape in shapes.items():
        name, part = original_key(key.removeprefix("text_model."))
        table[key] = rows(name, shape, part, 3) if part is not None else same(name, shape)
    return table


def empty_text_encoder(config: Mapping[str, Any]):
    """transformers' ``CLIPTextModel`` from ``config`` with its parameters on the meta device, and its key table."""
    from transformers import CLIPTextConfig, CLIPTextModel
    with empty_parameters():
        model = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return model, text_sources(shapes)

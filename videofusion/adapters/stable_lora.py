"""stable_lora files (Text-To-Video-Finetuning's ``webui_*.safetensors``, read by sd-webui-text2video): loralib
factors ``<layer>.lora_A`` / ``<layer>.lora_B`` under the original ModelScope release's layer names (UNet:
``input_blocks.4.1.transformer_blocks.0.attn1.to_q``, text encoder: OpenCLIP's ``resblocks.0.attn.q_proj``),
safetensors metadata ``stable_lora_text_to_video``. Its ``full_weights`` files hold the same factors under
diffusers' names. :func:`diffusers_layer` names a layer as our (diffusers') modules do.

The release's UNet names are :mod:`videofusion.convert.unet`'s.
"""
from __future__ import annotations

import re

from torch import nn

from ..convert.unet import original_key
from ..errors import SettingError
from .lora import ADAPTABLE

STABLE_LORA_METADATA = "stable_lora_text_to_video"
# the tool's text encoder names (OpenCLIP's, but q/k/v kept apart) -> transformers'
_TEXT = [("resblocks.", "text_model.encoder.layers."), (".attn.", ".self_attn."), (".c_fc.", ".fc1."),
         (".c_proj.", ".fc2.")]
ORIGINAL_UNET = re.compile(r"(input_blocks|middle_block|output_blocks|time_embed|out)\.")
ORIGINAL_TEXT = re.compile(r"resblocks\.")


def unet_table(unet: nn.Module) -> dict[str, str]:
    """The original layer name -> ours, for every layer of ``unet`` a LoRA can adapt (the release's key
    table, :func:`videofusion.convert.unet.original_key`)."""
    table = {}
    for name, module in unet.named_modules():
        if isinstance(module, ADAPTABLE):
            try:
                table[original_key(f"{name}.weight", unet.config).removesuffix(".weight")] = name
            except ValueError:  # a layer the release does not have (a distilled UNet's cond_proj)
                pass
    return table


def text_table(text_encoder: nn.Module) -> dict[str, str]:
    """``{"text_model.": ""}`` when the text encoder's names lack transformers 4's ``text_model.`` prefix (ours
    and transformers 5's), so files written against transformers 4 load."""
    return {} if "text_model" in dict(text_encoder.named_children()) else {"text_model.": ""}


def diffusers_layer(name: str, component: str, table: dict[str, str]) -> str:
    """``name`` (an original layer name, or already ours) as our module name. ``table``: :func:`unet_table` of
    the UNet, or :func:`text_table` of the text encoder. SettingError for an original UNet name this UNet has
    no layer for."""
    if component == "text_encoder":
        if ORIGINAL_TEXT.match(name):
            for original, ours in _TEXT:
                name = name.replace(original, ours)
        return name.removeprefix("text_model.") if table.get("text_model.") == "" else name
    if not ORIGINAL_UNET.match(name):
        return name
    if name not in table:
        raise SettingError("lora", f"layer {name!r}", "layers of the original ModelScope UNet of this model's shape")
    return table[name]


def is_stable_lora(keys, metadata) -> bool:
    """A stable_lora file: its metadata key, or loralib factor keys (``.lora_A`` with no ``.weight``)."""
    return STABLE_LORA_METADATA in (metadata or {}) or any(k.endswith((".lora_A", ".lora_B")) for k in keys)

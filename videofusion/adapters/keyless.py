"""Keyless LoRA lists: cloneofsimo's lora (``save_lora_weight``, the default of Text-To-Video-Finetuning and
T2V-Turbo's ``unet_lora.pt``) saves ``torch.save([up_0, down_0, up_1, down_1, ...])`` with no layer names.

The order is the tool's search: for each "target" block (a module of one of the chosen classes, in module
order), the linear and convolution layers under it, in module order, each once. The file does not say
which targets were chosen, so :func:`keyless_pairs` tries them: the tools' defaults first, then every
combination of the model's block kinds, and takes the first whose layer count and every layer's shapes match.
Before its PEFT backend (diffusers 0.19 to 0.25 without peft installed), diffusers built most UNet layers as
``LoRACompatibleLinear`` / ``LoRACompatibleConv``, which the tool skipped: those lists are matched too
(``era="lora-compatible"``). Our module names and order are diffusers' and transformers', so the search
runs on our models directly.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import SettingError
from .lora import LoraPair, fit_pair

# a block kind (the diffusers / transformers class name the tools are given) -> the names of its modules
UNET_BLOCKS = {
    "UNet3DConditionModel": r"",
    "Transformer2DModel": r".*\.attentions\.\d+",
    "TransformerTemporalModel": r"transformer_in|.*\.temp_attentions\.\d+",
    "TemporalConvLayer": r".*\.temp_convs\.\d+",
    "ResnetBlock2D": r".*\.resnets\.\d+",
    "Attention": r".*\.attn[12]",
    "GEGLU": r".*\.ff\.net\.0",
}
TEXT_BLOCKS = {
    "CLIPTextModel": r"",
    "CLIPEncoderLayer": r"(text_model\.)?encoder\.layers\.\d+",
    "CLIPAttention": r".*\.self_attn",
    "CLIPMLP": r".*\.mlp",
}
# the targets the tools ship with, tried first
DEFAULT_TARGETS = {
    "unet": [("UNet3DConditionModel",), ("ResnetBlock2D",), ("Attention", "GEGLU"),
             ("ResnetBlock2D", "Attention", "GEGLU")],
    "text_encoder": [("CLIPEncoderLayer",), ("CLIPAttention",)],
}
# the UNet layers diffusers 0.19-0.25 built as plain torch layers when peft was not installed
_PLAIN_BEFORE_PEFT = re.compile(r"conv_in|conv_out|(.*\.)?temp_convs\.\d+\.conv\d\.\d+|"
                                r"(transformer_in|.*\.temp_attentions\.\d+)\.proj_(in|out)")
_SEARCHED = (nn.Linear, nn.Conv2d, nn.Conv3d)


@dataclass
class KeylessLora:
    """The lists of a keyless file or folder, by component (``unet``, ``text_encoder``): each
    ``[up, down, up, down, ...]`` as saved."""

    lists: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    source: str = "the LoRA"


def target_layers(model: nn.Module, blocks: dict[str, str], targets: tuple[str, ...],
                  era: str = "plain") -> list[str]:
    """The layers the tool adapts for ``targets`` (block kinds of ``blocks``), in its order, each once.
    ``era="lora-compatible"`` keeps only the UNet layers diffusers then built as plain torch layers."""
    patterns = [re.compile(blocks[t]) for t in targets]
    found: dict[str, None] = {}
    for ancestor, block in model.named_modules():
        if not any(p.fullmatch(ancestor) for p in patterns):
            continue
        for name, module in block.named_modules(prefix=ancestor):
            if name != ancestor and isinstance(module, _SEARCHED):
                if era == "plain" or _PLAIN_BEFORE_PEFT.fullmatch(name):
                    found.setdefault(name.lstrip("."))
    return list(found)


def _candidates(component: str, blocks: dict[str, str]):
    seen = set()
    for targets in DEFAULT_TARGETS[component]:
        seen.add(frozenset(targets))
        yield targets
    kinds = list(blocks)
    for size in range(1, len(kinds) + 1):
        for targets in itertools.combinations(kinds, size):
            if frozenset(targets) not in seen:
                yield targets


def keyless_pairs(model: nn.Module, component: str, tensors: list[torch.Tensor],
                  source: str = "the LoRA") -> dict[str, LoraPair]:
    """``[up, down, ...]`` as layer name -> :class:`LoraPair` for ``model`` (the pipeline's ``component``);
    SettingError when no target choice of the tools gives that many layers of those shapes."""
    if len(tensors) % 2 or not all(isinstance(t, torch.Tensor) for t in tensors) or not tensors:
        raise SettingError("lora", f"{source}: a list of {len(tensors)} item(s)",
                           "a keyless LoRA: a non-empty list of tensors [up, down, up, down, ...]")
    pairs = [LoraPair(down=tensors[i + 1], up=tensors[i]) for i in range(0, len(tensors), 2)]
    blocks = UNET_BLOCKS if component == "unet" else TEXT_BLOCKS
    layers = dict(model.named_modules())
    counts = set()
    for era in ("plain", "lora-compatible") if component == "unet" else ("plain",):
        for targets in _candidates(component, blocks):
            names = target_layers(model, blocks, targets, era)
            counts.add(len(names))
            if len(names) == len(pairs) and \
                    not any(isinstance(fit_pair(n, layers[n], p), str) for n, p in zip(names, pairs)):
                return dict(zip(names, pairs))
    raise SettingError("lora", f"{source}: {len(pairs)} {component} layer pairs that match no choice of target "
                       f"blocks ({', '.join(blocks)})",
                       f"a keyless list for this {component}: layer counts it could hold are "
                       f"{sorted(counts)[:12]}{' ...' if len(counts) > 12 else ''}")

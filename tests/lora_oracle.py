"""LoRA fixtures for the tests: peft (the oracle) applied to diffusers' UNet3D and transformers' CLIP text
model, and LoRA files written the way each tool writes them."""
from __future__ import annotations

import os

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

# every adaptable layer kind of diffusers' UNet3D: linear, 2-D convs (1x1 proj_in too), temporal 3-D convs
UNET_TARGETS = (r".*(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|time_emb_proj|ff\.net\.0\.proj|ff\.net\.2|"
                r"resnets\.\d+\.conv1|resnets\.\d+\.conv2|conv_shortcut|temp_convs\.\d+\.(conv1\.2|conv[234]\.3)|"
                r"downsamplers\.0\.conv|upsamplers\.0\.conv|conv_in|conv_out|linear_1|linear_2)")
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def add_peft_adapter(model: torch.nn.Module, name: str, targets, seed: int, r: int = 4, alpha: float = 8,
                     alpha_pattern: dict | None = None) -> tuple[dict, LoraConfig]:
    """Inject a random (non-zero B) peft LoRA adapter into ``model``; returns its state dict and config."""
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                        alpha_pattern=alpha_pattern or {})
    torch.manual_seed(seed)
    inject_adapter_in_model(config, model, adapter_name=name)
    for module in model.modules():  # init_lora_weights=False draws B ~ kaiming: shrink to a realistic update
        if hasattr(module, "lora_B") and name in module.lora_B:
            with torch.no_grad():
                module.lora_B[name].weight.mul_(0.1)
    return get_peft_model_state_dict(model, adapter_name=name), config


def peft_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def peft_activate(model: torch.nn.Module, weights: dict[str, float]) -> None:
    """Active adapters ``weights`` (name -> weight), as diffusers' ``set_adapters`` sets peft's layers."""
    for layer in peft_layers(model):
        layer.set_adapter([n for n in weights if n in layer.lora_A])
        for name, weight in weights.items():
            if name in layer.lora_A:
                layer.set_scale(name, weight)


def save_diffusers_lora(folder: str, unet_layers: dict | None = None, unet_config: LoraConfig | None = None,
                        text_layers: dict | None = None, text_config: LoraConfig | None = None) -> str:
    """A LoRA file as diffusers' ``save_lora_weights`` writes it (with its adapter metadata)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    meta = (lambda c: None if c is None else {k: v for k, v in c.to_dict().items()
                                              if k in ("r", "lora_alpha", "alpha_pattern", "rank_pattern")})
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers,
        unet_lora_adapter_metadata=meta(unet_config), text_encoder_lora_adapter_metadata=meta(text_config))
    return os.path.join(folder, "pytorch_lora_weights.safetensors")


def diffusers_unet(folder: str):
    from diffusers import UNet3DConditionModel
    return UNet3DConditionModel.from_pretrained(folder, subfolder="unet").eval()


def transformers_text_encoder(folder: str):
    from transformers import CLIPTextModel
    return CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval()


def unet_inputs(seed: int = 0, frames: int = 3, size: int = 8, context_dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, size, size, generator=g), torch.tensor(10),
            torch.randn(1, 5, context_dim, generator=g))

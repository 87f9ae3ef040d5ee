"""LoRA training (``lora_rank`` in a training config): trainable adapters on the pipeline's models, and their
state in checkpoints. The adapters are :mod:`videofusion.adapters`', saved in diffusers' LoRA format."""
from __future__ import annotations

import torch

TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # the text encoder's attention projections


def add_lora_adapters(pipe, config) -> dict[str, dict]:
    """Trainable LoRA adapters (``lora_rank``, ``lora_alpha``) on the UNet's ``lora_target_modules``, and with
    ``train_text_encoder`` on the text encoder's attention projections, drawn from the run's seed; returns
    component -> layer -> update (its ``down`` / ``up`` are the parameters)."""
    g = torch.Generator("cpu").manual_seed(config.seed)
    alpha = config.lora_alpha or config.lora_rank
    adapters = {"unet": pipe.lora.add_trainable("unet", "trained", config.lora_target_modules, config.lora_rank,
                                                alpha, g)}
    if config.train_text_encoder:
        adapters["text_encoder"] = pipe.lora.add_trainable("text_encoder", "trained", list(TEXT_LORA_TARGETS),
                                                           config.lora_rank, alpha, g)
    return adapters


def adapter_params(updates: dict) -> list[torch.nn.Parameter]:
    """The trainable factors of one component's adapters (layer -> update): each update's ``down`` and ``up``."""
    return [p for update in updates.values() for p in (update.down, update.up)]


def lora_state(adapters: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The trained factors as a flat dict of tensors (``<component>.<layer>.down`` / ``.up``) for a checkpoint."""
    return {f"{c}.{layer}.{part}": getattr(u, part).detach().clone()
            for c, layers in adapters.items() for layer, u in layers.items() for part in ("down", "up")}


def load_lora_state(adapters: dict[str, dict], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for c, layers in adapters.items():
            for layer, u in layers.items():
                u.down.copy_(state[f"{c}.{layer}.down"])
                u.up.copy_(state[f"{c}.{layer}.up"])

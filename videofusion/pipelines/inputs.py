"""The checks of a pipeline call's arguments that are not generation settings (those are
:class:`~videofusion.settings.GenerationSettings`'): prompts and their embeddings, generators, latents, the
output type, callbacks. All run before any model does."""
from __future__ import annotations

import math

import torch

from ..errors import SettingError
from ..models.attention import set_processor_kwargs
from ..settings import GenerationSettings, is_count

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def split_attention_kwargs(cross_attention_kwargs) -> tuple[float, dict]:
    """diffusers' ``cross_attention_kwargs`` of a call: its ``"scale"``, the call's LoRA scale (default 1: every
    unfused adapter at ``s`` times its weight, on the UNet and the text encoder), and the other keys, which go to
    the UNet's attention processors (those set with ``unet.set_attn_processor``)."""
    if cross_attention_kwargs is not None and not isinstance(cross_attention_kwargs, dict):
        raise SettingError("cross_attention_kwargs", cross_attention_kwargs, "a dict or None")
    kwargs = dict(cross_attention_kwargs or {})
    scale = kwargs.pop("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise SettingError("cross_attention_kwargs['scale']", scale, "a finite number (the LoRA scale)")
    return float(scale), kwargs


def check_call(pipe, settings: GenerationSettings, prompt, negative_prompt, generator, latents, prompt_embeds,
               negative_prompt_embeds, output_type: str, callback_steps, cross_attention_kwargs,
               num_videos_per_prompt) -> int:
    """Check what a call of ``pipe`` passes besides its :class:`~videofusion.settings.GenerationSettings`
    (already checked and sized), before any model runs; returns the number of videos."""
    if not is_count(num_videos_per_prompt):
        raise SettingError("num_videos_per_prompt", num_videos_per_prompt, "an integer >= 1")
    if settings.eta > 0 and not pipe.scheduler.accepts_eta:
        raise ValueError(f"eta: only schedulers with an eta (DDIM) use it; {type(pipe.scheduler).__name__} "
                         "does not, so pass eta=0")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: {output_type!r} is not one of {list(OUTPUT_TYPES)}")
    if not is_count(callback_steps):
        raise ValueError(f"callback_steps: must be a positive integer, got {callback_steps!r}")
    scale, processor_kwargs = split_attention_kwargs(cross_attention_kwargs)
    pipe.lora.check_unfused_reach()
    batch = _prompt_batch(prompt, prompt_embeds)
    _check_negative(negative_prompt, negative_prompt_embeds, prompt_embeds, batch)
    total = batch * num_videos_per_prompt
    if isinstance(generator, (list, tuple)) and len(generator) not in (1, total):
        raise ValueError(f"generator: a list of {len(generator)} generators was passed for {total} video(s) "
                         f"({batch} prompt(s) x num_videos_per_prompt={num_videos_per_prompt}); "
                         "pass one per video or a single generator")
    if latents is not None:
        expected = pipe.latent_shape(total, settings)
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents: expected shape {expected} (batch, channels, num_frames, "
                             f"height/{pipe.vae_scale_factor}, width/{pipe.vae_scale_factor}), "
                             f"got {tuple(latents.shape)}")
    set_processor_kwargs(pipe.unet, processor_kwargs)  # a ValueError if no processor would take them
    pipe.lora.set_call_scale(scale)  # the call's state, set once everything is checked (pipe.end_call resets it)
    return total


def _prompt_batch(prompt, prompt_embeds) -> int:
    """The number of prompts: exactly one of ``prompt`` (a string or a non-empty list of strings) and
    ``prompt_embeds`` (a (batch, tokens, dim) tensor) must be given."""
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("prompt and prompt_embeds: pass exactly one of them")
    if prompt is not None:
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            return len(prompt)
        raise ValueError(f"prompt: must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
        raise ValueError("prompt_embeds: must be a tensor (batch, tokens, dim)")
    return prompt_embeds.shape[0]


def _check_negative(negative_prompt, negative_prompt_embeds, prompt_embeds, batch: int) -> None:
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("negative_prompt and negative_prompt_embeds: pass at most one of them")
    if isinstance(negative_prompt, list):
        if len(negative_prompt) != batch or not all(isinstance(p, str) for p in negative_prompt):
            raise ValueError(f"negative_prompt: a list of {len(negative_prompt)} was passed for "
                             f"{batch} prompt(s); pass one string or one per prompt")
    elif negative_prompt is not None and not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt: must be a string or a list of strings, "
                         f"got {type(negative_prompt).__name__}")
    if negative_prompt_embeds is not None:
        if prompt_embeds is None or negative_prompt_embeds.shape != prompt_embeds.shape:
            raise ValueError("negative_prompt_embeds: must come with prompt_embeds of the same shape")

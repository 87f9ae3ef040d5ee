"""VideoToVideoSDPipeline: a video and a prompt -> the video re-generated from a noised copy of it (SDEdit,
Meng et al. 2022, applied to every frame's latents): zeroscope's XL refinement step, or a re-prompt.

``strength`` s in (0, 1]: the input's latents are noised to the timestep a fraction s into the schedule
(s = 1: pure noise, the input is forgotten) and the last s of the steps denoise them. The steps are
:class:`~videofusion.pipelines.core.VideoPipeline`'s, so the loop, memory options and outputs are those of
text-to-video. Numbers match diffusers' ``VideoToVideoSDPipeline`` for the same components and inputs.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import SettingError
from ..io.frames import video_to_tensor
from ..io.video import DEFAULT_FPS
from ..noise import randn
from ..settings import VIDEO_TO_VIDEO_DEFAULTS as DEFAULTS
from ..settings import GenerationSettings
from .core import TextToVideoSDPipelineOutput, VideoPipeline

__all__ = ["VideoToVideoSDPipeline", "TextToVideoSDPipelineOutput"]


class VideoToVideoSDPipeline(VideoPipeline):
    """Video-to-video with a UNet3D denoiser (zeroscope v2 XL, or any text-to-video folder's components:
    ``VideoToVideoSDPipeline(**text_to_video_pipe.components)`` shares them without reloading)."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, video: Any = None,
                 strength: float = DEFAULTS.strength, num_inference_steps: int = DEFAULTS.num_inference_steps,
                 guidance_scale: float = DEFAULTS.guidance_scale, negative_prompt: str | list[str] | None = None,
                 eta: float = DEFAULTS.eta, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "np",
                 return_dict: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 callback_steps: int = 1, cross_attention_kwargs: dict | None = None, clip_skip: int | None = None,
                 height: int | None = None, width: int | None = None, output_path: str | list[str] | None = None,
                 output_fps: float = DEFAULT_FPS):
        """Re-generate ``video`` following ``prompt``.

        Args:
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip: as text-to-video.
            video: the video(s) to start from, in any form :func:`videofusion.io.frames.video_to_tensor`
                takes: a text-to-video call's ``.frames`` as they are, frames (PIL, arrays, tensors), a 4-D or
                5-D array or tensor, or a path to an mp4/gif. One video for every prompt, or one per prompt.
            strength: in (0, 1] (default 0.6): the share of the schedule that runs (see the module docstring).
            num_inference_steps: the schedule's length (default 50); ``int(steps * strength)`` of them run.
            guidance_scale: classifier-free guidance (default 15.0, diffusers' for this pipeline).
            eta, generator, output_type, return_dict, callback, callback_steps, cross_attention_kwargs: as
                text-to-video. A generator draws the VAE's posterior sample, then the noise; a list of one
                generator per video makes each video depend on its own generator only.
            latents: noised latents ``(videos, 4, frames, height/8, width/8)`` to start the loop from instead of
                the noised input (diffusers accepts this argument and ignores it).
            height, width: resize the input frames to this size first (pixels, both or neither; bicubic with
                antialiasing), e.g. 1024x576 for zeroscope XL; default: the input's size.
            output_path, output_fps: write the video(s) as mp4 files instead of returning frames.
        """
        frames = video_to_tensor(video, height, width)  # (v, c, f, h, w): pixels in [-1, 1], or latents
        pixels = frames.shape[1] == 3
        settings = GenerationSettings(
            num_frames=frames.shape[2], num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            height=frames.shape[3] * (1 if pixels else self.vae_scale_factor),
            width=frames.shape[4] * (1 if pixels else self.vae_scale_factor), eta=eta, strength=strength,
        ).sized(self.native_size, self.vae_scale_factor)
        num_videos = self.check_inputs(settings, prompt, negative_prompt, generator, latents, prompt_embeds,
                                       negative_prompt_embeds, output_type, callback_steps, cross_attention_kwargs, 1)
        if frames.shape[0] not in (1, num_videos):
            raise SettingError("video", f"{frames.shape[0]} videos for {num_videos} prompts",
                               "one video for every prompt, or one per prompt")
        writers = self.video_writers(output_path, output_type, num_videos, output_fps)
        device = self.execution_device()
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, num_steps = self.strength_timesteps(num_inference_steps, strength)

        # 1. the prompts' embeddings; with guidance the negative ones come first in the batch
        guided = settings.guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, 1, guided, negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
        context = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds  # (2b, 77, d)

        # 2. the input's latents noised to the first timestep that runs, 3. denoised, 4. decoded
        if latents is None:
            frames = frames.expand(num_videos, *frames.shape[1:]).to(device, prompt_embeds.dtype)
            latents = self.noised_latents(frames, timesteps[0], generator)
        latents = self.denoise(latents.to(device), timesteps, context, settings, generator, callback,
                               callback_steps, num_steps)  # (b, c, f, h, w)
        return self.output(latents, output_type, writers, return_dict)

    def strength_timesteps(self, num_inference_steps: int, strength: float) -> tuple[torch.Tensor, int]:
        """The tail of the scheduler's timesteps that a call of ``strength`` runs, and its step count:
        ``int(num_inference_steps * strength)`` steps (as diffusers' ``get_timesteps``). ValueError when that
        is no step at all (raise ``strength`` or ``num_inference_steps``)."""
        run = min(int(num_inference_steps * strength), num_inference_steps)
        if run == 0:
            raise SettingError("strength", strength, f"large enough that int(num_inference_steps * strength) >= 1 "
                                                     f"(num_inference_steps={num_inference_steps})")
        start = (num_inference_steps - run) * self.scheduler.order
        self.scheduler.set_begin_index(start)
        return self.scheduler.timesteps[start:], run

    def noised_latents(self, frames: torch.Tensor, timestep: torch.Tensor, generator=None) -> torch.Tensor:
        """Frames ``(b, 3, f, h, w)`` in [-1, 1] (or latents ``(b, 4, f, h, w)``) -> their latents noised to
        ``timestep`` ``(b, 4, f, h/8, w/8)``: a VAE posterior sample, scaled, plus the scheduler's noise. A
        list of generators draws video ``i``'s sample and noise from ``generator[i]``; one generator draws them
        for all frames at once (diffusers' order of draws: the sample, then the noise)."""
        b, c, f, h, w = frames.shape
        rows = frames.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
        if c == 4:
            latents = rows
        else:
            self.placement.onload(self.vae)
            posterior = self.vae.encode(rows).latent_dist  # VAE slicing and tiling apply here
            latents = posterior.mean + posterior.std * _per_video_randn(posterior.mean.shape, b, generator, rows)
            latents = latents * self.vae.config.scaling_factor
        noise = _per_video_randn(latents.shape, b, generator, latents)  # (b*f, 4, h', w')
        latents = self.scheduler.add_noise(latents, noise, timestep.reshape(1).repeat(b * f))
        return latents.reshape(b, f, *latents.shape[1:]).permute(0, 2, 1, 3, 4)  # (b, 4, f, h', w')


def _per_video_randn(shape: torch.Size, num_videos: int, generator, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise of ``shape`` (rows = videos x frames): with a list of generators, video ``i``'s
    rows come from ``generator[i]`` alone (the same numbers as that generator drawing for that video alone)."""
    if isinstance(generator, (list, tuple)) and len(generator) > 1:
        if len(generator) != num_videos:
            raise SettingError("generator", f"a list of {len(generator)}", f"one generator per video ({num_videos})")
        return randn((num_videos, shape.numel() // num_videos), generator, like.device, like.dtype).reshape(shape)
    return randn(shape, generator, like.device, like.dtype)

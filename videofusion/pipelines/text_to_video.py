"""TextToVideoSDPipeline: prompt -> text embeddings -> denoised video latents -> frames.

The call reads as the algorithm; its steps are :class:`~videofusion.pipelines.core.VideoPipeline`'s.
Numbers match diffusers' ``TextToVideoSDPipeline`` for the same components, inputs and generator.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..io.video import DEFAULT_FPS
from ..long_video import FIFO, LongVideo
from ..settings import DEFAULTS, GenerationSettings
from .core import TextToVideoSDPipelineOutput, VideoPipeline
from .fifo import check_fifo, generate_fifo

__all__ = ["TextToVideoSDPipeline", "TextToVideoSDPipelineOutput"]


class TextToVideoSDPipeline(VideoPipeline):
    """Text-to-video with a UNet3D denoiser (ModelScope text-to-video, zeroscope v2).

    Components: ``vae`` (:class:`~videofusion.models.AutoencoderKL`), ``text_encoder`` (transformers
    ``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``unet``
    (:class:`~videofusion.models.UNet3DConditionModel`) and ``scheduler`` (any of
    :mod:`videofusion.schedulers`).
    """

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int = DEFAULTS.num_frames,
                 num_inference_steps: int = DEFAULTS.num_inference_steps,
                 guidance_scale: float = DEFAULTS.guidance_scale, negative_prompt: str | list[str] | None = None,
                 eta: float = DEFAULTS.eta, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "np",
                 return_dict: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 callback_steps: int = 1, cross_attention_kwargs: dict | None = None,
                 clip_skip: int | None = None, num_videos_per_prompt: int = 1,
                 noise: str = DEFAULTS.noise, noise_ratio: float = DEFAULTS.noise_ratio,
                 long_video: LongVideo | FIFO | None = None, output_path: str | list[str] | None = None,
                 output_fps: float = DEFAULT_FPS):
        """Generate videos from text.

        Args:
            prompt: the text, or a list of texts (one video each, times ``num_videos_per_prompt``).
            height, width: pixels, divisible by the VAE's scale factor (8); default the model's native
                size ``unet.config.sample_size * vae_scale_factor`` (256 for the ModelScope checkpoint).
            num_frames: frames per video (default 16, the trained length).
            num_inference_steps: denoising steps (default 50).
            guidance_scale: classifier-free guidance weight (default 9.0); ``<= 1`` turns guidance off
                and halves the UNet work.
            negative_prompt: what to steer away from (a string, or one per prompt).
            eta: DDIM's eta (0 = deterministic DDIM); only for schedulers that have it.
            generator: a ``torch.Generator`` for the whole batch, or a list with one per video (then each
                video depends only on its own generator).
            latents: initial noise ``(videos, 4, num_frames, height/8, width/8)``; drawn if omitted.
            prompt_embeds, negative_prompt_embeds: precomputed CLIP embeddings instead of the texts.
            output_type: ``"np"`` (default), ``"pt"``, ``"pil"`` or ``"latent"``.
            return_dict: return a :class:`TextToVideoSDPipelineOutput` (default) or a 1-tuple.
            callback, callback_steps: ``callback(step, timestep, latents)`` every ``callback_steps`` steps.
            cross_attention_kwargs: ``"scale"``, the LoRA scale of this call (unfused adapters at ``s`` times
                their weights; default 1); other keys go to the UNet's attention processors for this call (those
                set with ``pipe.unet.set_attn_processor``).
            clip_skip: use the CLIP hidden state this many layers before the last.
            num_videos_per_prompt: videos per prompt (default 1).
            noise, noise_ratio: ``"independent"`` (default) or VideoFusion's ``"decomposed"`` initial noise
                with a shared base of weight ``noise_ratio`` (see :func:`videofusion.noise.initial_latents`).
            long_video: for videos longer than the model was trained on (no change when
                ``num_frames <= window``): ``LongVideo(window=16, stride=4)``, windowed temporal attention
                and noise rescheduling (FreeNoise, see :mod:`videofusion.long_video`), or ``FIFO()``,
                FIFO-Diffusion's queue of frames at increasing noise levels (:mod:`videofusion.pipelines.fifo`;
                DDIM or DDPM only, ``num_partitions * window`` steps along the queue, memory and time per
                frame independent of ``num_frames``, frames decoded and written as they leave the queue).
            output_path, output_fps: write the video(s) as H.264 mp4 at ``output_fps`` frames per second
                (default 8; a path, or one per video), decoded and encoded chunk by chunk (VAE slicing's
                chunk); then ``frames`` is None and ``paths`` lists the files.

        Every argument is checked before any model runs (:class:`videofusion.settings.GenerationSettings`
        for the settings); a bad one is a ValueError naming it.
        """
        settings = GenerationSettings(
            num_frames=num_frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            height=height, width=width, eta=eta, noise=noise, noise_ratio=noise_ratio, long_video=long_video,
        ).sized(self.native_size, self.vae_scale_factor)
        num_videos = self.check_inputs(settings, prompt, negative_prompt, generator, latents, prompt_embeds,
                                       negative_prompt_embeds, output_type, callback_steps, cross_attention_kwargs,
                                       num_videos_per_prompt)
        fifo = settings.long_video if isinstance(settings.long_video, FIFO) else None
        if fifo is not None:
            check_fifo(fifo, self.scheduler, latents)
            if settings.num_frames <= fifo.window:  # one window: plain generation
                settings, fifo = settings.replace(long_video=None), None
        writers = self.video_writers(output_path, output_type, num_videos, output_fps)
        device = self.execution_device()
        self.scheduler.set_timesteps(num_inference_steps, device=device)  # validates the step count

        # 1. the prompts' embeddings; with guidance the negative ones come first in the batch
        guided = self.classifier_free_guidance(settings)  # False for a guidance-distilled UNet: one call per step
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_videos_per_prompt, guided, negative_prompt, prompt_embeds,
            negative_prompt_embeds, clip_skip)
        context = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds  # (2b, 77, d)

        if fifo is not None:  # 2.-4. a queue of frames at increasing noise levels, decoded as they leave it
            return generate_fifo(self, fifo, settings, context, num_videos, generator, writers, output_type,
                                 callback, callback_steps, return_dict)

        # 2. noise, 3. denoised along the scheduler's timesteps, 4. decoded
        latents = self.prepare_latents(num_videos, settings, generator, device, prompt_embeds.dtype, latents)
        latents = self.denoise(latents, self.scheduler.timesteps, context, settings, generator,
                               callback, callback_steps)  # (b, c, f, h, w)
        return self.output(latents, output_type, writers, return_dict)

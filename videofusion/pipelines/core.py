"""What every UNet3D video pipeline shares: its components, devices and memory options, and the steps of a
call (encode the prompt, draw the initial latents, the denoising loop, decode and return or write frames).

A pipeline class (:class:`~videofusion.pipelines.text_to_video.TextToVideoSDPipeline`) subclasses
:class:`VideoPipeline` and writes its ``__call__`` as the algorithm, from these steps. Wiring only: the math
lives in the models and schedulers, the file formats in :mod:`videofusion.pipelines.folders` and
:mod:`videofusion.io`, the device moves in :mod:`videofusion.runtime`.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..errors import SettingError
from ..io.streaming import decoded_chunks, video_writers, write_videos
from ..long_video import long_video_latents
from ..models.layers import OFFLOAD_UNITS
from ..outputs import Output
from ..runtime.devices import accelerator_device, warn_no_accelerator
from ..runtime.fast import FastPath
from ..runtime.offload import ModelOffload, SequentialOffload
from ..runtime.placement import Placement
from ..runtime.streamed import DEFAULT_BLOCK_BYTES, StreamedOffload
from ..settings import GenerationSettings, is_count
from .folders import load_pipeline_components, save_pipeline

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
logger = logging.getLogger(__name__)
_XFORMERS_NOTED: list[bool] = []  # the xformers note is logged once per process


@dataclass
class TextToVideoSDPipelineOutput(Output):
    """``frames``: np ``(batch, num_frames, height, width, 3)`` float in [0, 1] for ``"np"``; torch
    ``(batch, num_frames, 3, height, width)`` for ``"pt"``; a list (per video) of lists of PIL images
    for ``"pil"``; the latents ``(batch, channels, num_frames, height/8, width/8)`` for ``"latent"``."""

    frames: Any
    paths: list[str] | None = None  # the files written by a call with output_path (frames is None then)


class VideoPipeline:
    """Components ``vae`` (:class:`~videofusion.models.AutoencoderKL`), ``text_encoder`` (transformers
    ``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``unet``
    (:class:`~videofusion.models.UNet3DConditionModel`) and ``scheduler`` (any of
    :mod:`videofusion.schedulers`), with the memory options and the steps of a call."""

    component_names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.scheduler = scheduler
        self.placement = Placement()
        self._progress_bar_config: dict = {}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *,
                        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
                        variant: str | None = None, **kwargs):
        """Load a diffusers-format pipeline folder or Hub id (``model_index.json`` + one subfolder per
        component). ``variant="fp16"`` reads the ``*.fp16.*`` weight files where a component has them (a
        variant no component has is an error); ``torch_dtype`` casts the models (one dtype, or a dict per
        component with an optional ``"default"``). Keyword arguments named after a component
        (``scheduler=...``, ``unet=...``) replace that component; ``cache_dir``, ``revision`` and
        ``local_files_only`` go to the Hub; ``low_cpu_mem_usage`` is accepted (see
        :func:`~videofusion.pipelines.folders.load_pipeline_components`)."""
        components = load_pipeline_components(pretrained_model_name_or_path, cls.component_names,
                                              torch_dtype=torch_dtype, variant=variant, **kwargs)
        return cls(**components)

    def save_pretrained(self, save_directory: str, *, variant: str | None = None,
                        safe_serialization: bool = True) -> None:
        """Write a diffusers-format folder (``model_index.json`` + components) that diffusers loads."""
        save_pipeline(type(self).__name__, self.components, save_directory, variant=variant,
                      safe_serialization=safe_serialization)

    @property
    def components(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.component_names}

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.unet, self.vae) if isinstance(m, torch.nn.Module)]

    # ------------------------------------------------------------------ devices
    def to(self, *args, **kwargs):
        """Move (and/or cast) every model, like ``nn.Module.to``: ``pipe.to("cuda")``,
        ``pipe.to(torch.float16)``, ``pipe.to("cuda", torch.float16)``."""
        if self.placement.offload is not None:
            device_args = [a for a in (*args, kwargs.get("device")) if isinstance(a, (str, torch.device))]
            if device_args:
                raise ValueError("to(device): CPU offload is enabled and moves the models itself; "
                                 "call disable_cpu_offload() first or pass only a dtype")
        for module in self._modules():
            module.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: the offload target when offload is on, else the UNet's device."""
        return self.placement.offload_device or next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (number of VAE blocks - 1), 8 for the published checkpoints."""
        return self.vae.config.scale_factor

    @property
    def native_size(self) -> int:
        """The model's own frame size in pixels (``unet.config.sample_size * vae_scale_factor``; 256 for
        the ModelScope checkpoint): height and width when a call gives none."""
        return self.unet.config.sample_size * self.vae_scale_factor

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar over the denoising steps (``disable=True`` hides it)."""
        self._progress_bar_config = kwargs

    def progress_bar(self, total: int):
        return tqdm(total=total, **self._progress_bar_config)

    # ------------------------------------------------------------------ memory options
    def enable_vae_slicing(self, frames_per_chunk: int = 1) -> None:
        """Decode ``frames_per_chunk`` frames at a time (default 1), each chunk moved to the CPU once
        decoded: exact, lower peak memory for long videos. ``output_type="pt"`` frames then come back
        on the CPU (diffusers keeps them on the device)."""
        self.vae.enable_slicing(frames_per_chunk)

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode large frames in overlapping tiles blended together (not exact at the seams)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_attention_slicing(self, slice_size: int | str | None = "auto") -> None:
        """Compute the UNet's attention in slices (exact). ``"auto"`` halves the heads, ``"max"``
        one slice at a time, an int that many heads per slice."""
        self.unet.set_attention_slice(slice_size)

    def disable_attention_slicing(self) -> None:
        self.unet.set_attention_slice(None)

    def enable_frame_chunking(self, frames_per_chunk: int = 8, pixels_per_chunk: int | None = None) -> None:
        """Run the UNet's per-frame layers over chunks of frames and its temporal layers over chunks of
        pixels, so activation memory inside a layer stops growing with ``num_frames``. Exact up to
        rounding (see :meth:`UNet3DConditionModel.enable_frame_chunking`)."""
        self.unet.enable_frame_chunking(frames_per_chunk, pixels_per_chunk)

    def disable_frame_chunking(self) -> None:
        self.unet.disable_frame_chunking()

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep the models in CPU memory and move each whole model to the accelerator while it runs
        (text encoder, then UNet, then VAE). With no accelerator this warns and changes nothing."""
        target = accelerator_device(gpu_id, device)
        if target is None:
            return warn_no_accelerator("enable_model_cpu_offload")
        self.placement.set_offload(ModelOffload(target), self._modules(), self.unet)

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep every weight in CPU memory and move each layer's weights to the accelerator only for
        its forward call: the least accelerator memory. On CUDA this is :meth:`enable_streamed_offload`
        with ``max_blocks=2`` (copies overlap compute); elsewhere each layer's copy waits (much slower).
        With no accelerator this warns and changes nothing."""
        target = accelerator_device(gpu_id, device)
        if target is None:
            return warn_no_accelerator("enable_sequential_cpu_offload")
        if target.type == "cuda":
            return self.enable_streamed_offload(max_blocks=2, device=target)
        self.placement.set_offload(SequentialOffload(target), self._modules(), self.unet)

    def enable_streamed_offload(self, max_blocks: int = 4, gpu_id: int | None = None,
                                device: torch.device | str | None = None,
                                block_bytes: int = DEFAULT_BLOCK_BYTES) -> None:
        """Keep every weight in pinned CPU memory and stream blocks of at most ``block_bytes`` (about
        one layer) to the GPU on a side CUDA stream while the previous blocks compute, at most
        ``max_blocks`` on the GPU at once (:mod:`videofusion.runtime.streamed`). Exact. On CUDA,
        ``enable_sequential_cpu_offload`` is this with ``max_blocks=2``. With no accelerator this warns
        and changes nothing; ``device="cpu"`` runs the schedule on the CPU (for tests)."""
        target = accelerator_device(gpu_id, device)
        if target is None:
            return warn_no_accelerator("enable_streamed_offload")
        offload = StreamedOffload(target, max_blocks=max_blocks, block_bytes=block_bytes,
                                  atomic=OFFLOAD_UNITS)  # checks its arguments before anything changes
        self.placement.set_offload(offload, self._modules(), self.unet)

    def disable_cpu_offload(self) -> None:
        """Turn model, sequential or streamed offload off; the models are left on the CPU."""
        self.placement.disable_offload()

    def enable_fast_path(self, fuse_qkv: bool = True, channels_last: bool = True, compile: bool = True,
                         mode: str = "max-autotune-no-cudagraphs", backend: str = "inductor") -> None:
        """Run the UNet on the fast path (:mod:`videofusion.runtime.fast`): fused attention projections,
        channels-last convolutions, ``torch.compile`` (``mode`` and ``backend`` are torch.compile's).
        Off by default, as in diffusers: the first call at each new size compiles (minutes with
        autotuning on a GPU; cached on disk for later processes), which pays off over many calls. Same
        outputs up to rounding. Not combinable with CPU offload, and the fused weights do not follow later
        weight updates: call again after changing the UNet's weights. CLI: ``--compile``."""
        fast = FastPath(fuse_qkv=fuse_qkv, channels_last=channels_last, compile=compile, mode=mode, backend=backend)
        self.placement.enable_fast_path(self.unet, fast)

    def disable_fast_path(self) -> None:
        """Back to the plain eager UNet."""
        self.placement.disable_fast_path(self.unet)

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU on the UNet (:meth:`UNet3DConditionModel.enable_freeu`): diffusers' parameters and numbers."""
        self.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self) -> None:
        self.unet.disable_freeu()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        """One matrix multiply for the q, k, v projections of every attention layer of the UNet and/or the
        VAE (same outputs up to rounding; inference only), as diffusers' method of the same name."""
        for model in ([self.unet] if unet else []) + ([self.vae] if vae else []):
            model.fuse_qkv_projections()

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        for model in ([self.unet] if unet else []) + ([self.vae] if vae else []):
            model.unfuse_qkv_projections()

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """Accepted for scripts written for diffusers. videofusion's attention always runs on PyTorch's
        fused ``scaled_dot_product_attention`` (memory-efficient and flash kernels included), so there is
        nothing to switch: this logs that once and changes nothing. xformers is not needed."""
        if not _XFORMERS_NOTED:
            _XFORMERS_NOTED.append(True)
            logger.info("enable_xformers_memory_efficient_attention: videofusion's attention already uses "
                        "PyTorch's fused scaled_dot_product_attention; nothing to change, xformers not needed")

    def disable_xformers_memory_efficient_attention(self) -> None:
        """Accepted for scripts written for diffusers; changes nothing (see the enable method)."""

    # ------------------------------------------------------------------ the steps of a call
    def check_inputs(self, settings: GenerationSettings, prompt, negative_prompt, generator, latents,
                     prompt_embeds, negative_prompt_embeds, output_type: str, callback_steps,
                     cross_attention_kwargs, num_videos_per_prompt) -> int:
        """Check what a call passes besides its :class:`~videofusion.settings.GenerationSettings` (already
        checked and sized), before any model runs; returns the number of videos."""
        if not is_count(num_videos_per_prompt):
            raise SettingError("num_videos_per_prompt", num_videos_per_prompt, "an integer >= 1")
        if settings.eta > 0 and not self.scheduler.accepts_eta:
            raise ValueError(f"eta: only schedulers with an eta (DDIM) use it; {type(self.scheduler).__name__} "
                             "does not, so pass eta=0")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: {output_type!r} is not one of {list(OUTPUT_TYPES)}")
        if not is_count(callback_steps):
            raise ValueError(f"callback_steps: must be a positive integer, got {callback_steps!r}")
        if cross_attention_kwargs:
            raise ValueError(f"cross_attention_kwargs: videofusion's attention takes no extra arguments, "
                             f"got {sorted(cross_attention_kwargs)}")
        batch = _prompt_batch(prompt, prompt_embeds)
        _check_negative(negative_prompt, negative_prompt_embeds, prompt_embeds, batch)
        total = batch * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) not in (1, total):
            raise ValueError(f"generator: a list of {len(generator)} generators was passed for {total} video(s) "
                             f"({batch} prompt(s) x num_videos_per_prompt={num_videos_per_prompt}); "
                             "pass one per video or a single generator")
        if latents is not None:
            expected = self.latent_shape(total, settings)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents: expected shape {expected} (batch, channels, num_frames, "
                                 f"height/{self.vae_scale_factor}, width/{self.vae_scale_factor}), "
                                 f"got {tuple(latents.shape)}")
        return total

    def latent_shape(self, num_videos: int, settings: GenerationSettings) -> tuple[int, ...]:
        """``(videos, channels, num_frames, height / scale, width / scale)`` for sized settings."""
        return (num_videos, self.unet.config.in_channels, settings.num_frames,
                settings.height // self.vae_scale_factor, settings.width // self.vae_scale_factor)

    def execution_device(self) -> torch.device:
        """The device of this call; warns (at the caller's line) when float16 would run on the CPU."""
        device = self.device
        if device.type == "cpu" and self.dtype == torch.float16:
            warnings.warn("float16 on the CPU runs on slow fallback kernels (often 10-20x slower than "
                          "float32); load with torch_dtype=torch.float32 or torch.bfloat16 for CPU runs",
                          stacklevel=4)  # this method, the pipeline's __call__, torch.no_grad, the caller
        return device

    def encode_prompt(self, prompt: str | list[str] | None, device: torch.device, num_videos_per_prompt: int,
                      do_classifier_free_guidance: bool, negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                      clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP embeddings ``(batch * num_videos_per_prompt, 77, dim)`` of the prompts and, with
        guidance, of the negative prompts (empty strings by default)."""
        self.placement.onload(self.text_encoder)
        if prompt_embeds is None:
            prompt_embeds = self._embed(prompt if isinstance(prompt, list) else [prompt], device, clip_skip)
        batch = prompt_embeds.shape[0]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None:
                negative = [""] * batch
            else:
                negative = [negative_prompt] * batch if isinstance(negative_prompt, str) else negative_prompt
            negative_prompt_embeds = self._embed(negative, device, None)
        dtype = self.text_encoder.dtype if self.text_encoder is not None else self.unet.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    def _embed(self, texts: list[str], device: torch.device, clip_skip: int | None) -> torch.Tensor:
        limit = self.tokenizer.model_max_length
        ids = self.tokenizer(texts, padding="max_length", max_length=limit, truncation=True,
                             return_tensors="pt").input_ids  # (n, 77)
        whole = self.tokenizer(texts, padding="longest", return_tensors="pt", verbose=False).input_ids  # (n, >= 77 if cut)
        if whole.shape[-1] > limit:  # as diffusers: say what CLIP cannot see
            cut = self.tokenizer.batch_decode(whole[:, limit - 1:-1], skip_special_tokens=True)
            logger.warning("The following part of your input was truncated because CLIP can only handle "
                           "sequences up to %d tokens: %s", limit, [c for c in cut if c])
        ids = ids.to(device)
        if clip_skip is None:
            return self.text_encoder(ids)[0]
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        return self.text_encoder.text_model.final_layer_norm(hidden)

    def prepare_latents(self, num_videos: int, settings: GenerationSettings, generator, device: torch.device,
                        dtype: torch.dtype, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The initial latents ``(videos, c, f, h, w)``: ``latents`` if given, else noise drawn as the
        settings say (independent or decomposed, FreeNoise-rescheduled for a long video), scaled by the
        scheduler's initial sigma."""
        if latents is None:
            latents = long_video_latents(self.latent_shape(num_videos, settings), generator, device, dtype,
                                         settings.noise, settings.noise_ratio, settings.long_video)
        return latents.to(device) * self.scheduler.init_noise_sigma  # (b, c, f, h, w)

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                settings: GenerationSettings, generator=None,
                callback: Callable[[int, int, torch.Tensor], None] | None = None, callback_steps: int = 1,
                num_steps: int | None = None) -> torch.Tensor:
        """The denoising loop over ``timesteps`` (the scheduler's, or a tail of them): latents
        ``(b, c, f, h, w)`` -> latents. ``context``: the text embeddings, negative ones first with guidance
        (``settings.guidance_scale > 1``: the UNet sees the batch twice and the two predictions are mixed).
        ``num_steps``: the steps the progress bar counts (default ``settings.num_inference_steps``; fewer
        when a tail of the schedule runs, as in video-to-video)."""
        guided = settings.guidance_scale > 1.0
        b, c, f, h, w = latents.shape
        # The scheduler steps on frames folded into the batch, as diffusers does, so stochastic
        # schedulers draw the same noise; with one generator per video, each video's frames share it.
        step_generator = generator
        if isinstance(generator, (list, tuple)) and len(generator) > 1:
            step_generator = [g for g in generator for _ in range(f)]
        step_kwargs = {"generator": step_generator, **({"eta": settings.eta} if self.scheduler.accepts_eta else {})}

        self.placement.onload(self.unet)
        window = settings.long_video
        self.unet.set_temporal_window(*((window.window, window.stride) if window else (None,)))
        unet = self.placement.unet_forward(self.unet)
        order = self.scheduler.order
        num_steps = settings.num_inference_steps if num_steps is None else num_steps
        num_warmup_steps = len(timesteps) - num_steps * order
        try:
            with self.progress_bar(total=num_steps) as bar:
                for i, t in enumerate(timesteps):
                    model_input = torch.cat([latents] * 2) if guided else latents  # (2b, c, f, h, w)
                    model_input = self.scheduler.scale_model_input(model_input, t)
                    noise_pred = unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
                    if guided:
                        uncond, cond = noise_pred.chunk(2)
                        noise_pred = uncond + settings.guidance_scale * (cond - uncond)
                    flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
                    flat_pred = noise_pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
                    flat = self.scheduler.step(flat_pred, t, flat, **step_kwargs).prev_sample
                    latents = flat.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)
                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % order == 0):
                        bar.update()
                        if callback is not None and i % callback_steps == 0:
                            callback(i // order, t, latents)
        finally:
            self.unet.set_temporal_window(None)
        return latents

    def output(self, latents: torch.Tensor, output_type: str, writers=None, return_dict: bool = True):
        """Decode the final latents into ``output_type`` (or write them through ``writers``, see
        :func:`videofusion.io.streaming.video_writers`) and return the call's result."""
        paths = None
        if output_type == "latent":
            video = latents
        elif writers is None and not self.vae.use_slicing:
            self.placement.onload(self.vae)
            video = self.postprocess(self.decode_latents(latents), output_type)
        else:  # chunk by chunk off the device, into the encoder or a CPU tensor
            self.placement.onload(self.vae)
            chunks = decoded_chunks(self.decode_latents, latents, self.vae.slice_size if self.vae.use_slicing
                                    else latents.shape[2])  # (b, 3, n, H, W) each, on the CPU
            if writers is not None:
                video, paths = None, write_videos((self.postprocess(c, "pt") for c in chunks), writers)
            else:
                video = self.postprocess(torch.cat(list(chunks), dim=2), output_type)
        self.placement.end_call()
        return TextToVideoSDPipelineOutput(frames=video, paths=paths) if return_dict else (video,)

    def video_writers(self, output_path, output_type: str, num_videos: int, fps: float):
        """Checked writers for ``output_path`` (None: the call returns frames), before any model runs."""
        if output_path is not None and output_type == "latent":
            raise ValueError("output_path: cannot write a video with output_type='latent'")
        return video_writers(output_path, num_videos, fps)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(b, c, f, h, w)`` -> video ``(b, 3, f, 8h, 8w)`` float32 in [-1, 1] (roughly)."""
        b, c, f, h, w = latents.shape
        latents = latents / self.vae.config.scaling_factor
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
        images = self.vae.decode(frames).sample  # (b*f, 3, H, W)
        video = images.reshape(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)  # (b, 3, f, H, W)
        return video.float()

    def postprocess(self, video: torch.Tensor, output_type: str):
        """``(b, 3, f, H, W)`` in [-1, 1] -> the requested output type (see the output class)."""
        video = (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)  # (b, f, 3, H, W)
        if output_type == "pt":
            return video
        frames = video.permute(0, 1, 3, 4, 2).cpu().float().numpy()  # (b, f, H, W, 3)
        if output_type == "np":
            return frames
        from PIL import Image
        return [[Image.fromarray(f) for f in (v * 255).round().astype("uint8")] for v in frames]


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

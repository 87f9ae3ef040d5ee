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

from ..io.streaming import decoded_chunks, video_writers, write_videos
from ..long_video import long_video_latents
from ..models.attention import set_processor_kwargs
from ..models.config import resolve_dtype
from ..models.layers import OFFLOAD_UNITS
from ..outputs import Output
from ..runtime.devices import accelerator_device, device_map_device, warn_no_accelerator
from ..runtime.fast import FastPath
from ..runtime.offload import ModelOffload, SequentialOffload
from ..runtime.placement import Placement
from ..runtime.streamed import DEFAULT_BLOCK_BYTES, StreamedOffload
from ..settings import GenerationSettings
from .folders import load_pipeline_components, save_pipeline
from ..adapters import PipelineAdapters, load_lora, parse_state_dict
from .inputs import check_call
from .prompts import embed_texts

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
    _optional_components: list[str] = []  # diffusers' attribute: components that may be None (none here)

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.scheduler = scheduler
        self.placement = Placement()
        self.lora = PipelineAdapters(self)  # LoRA adapters on the UNet and text encoder
        self.prompt_weighting = False  # (word:1.3) syntax: enable_prompt_weighting()
        self._progress_bar_config: dict = {}

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *,
                        torch_dtype: torch.dtype | dict[str, torch.dtype] | None = None,
                        variant: str | None = None, dtype: torch.dtype | dict[str, torch.dtype] | None = None,
                        device_map: str | torch.device | None = None, **kwargs):
        """Load a diffusers-format pipeline folder or Hub id (``model_index.json`` + one subfolder per
        component). ``variant="fp16"`` reads the ``*.fp16.*`` weight files where a component has them (a
        variant no component has is an error); ``torch_dtype`` (or ``dtype``) casts the models (one dtype, or a
        dict per component with an optional ``"default"``); ``device_map`` ("cpu", "cuda": one device) moves the
        pipeline there (:func:`~videofusion.runtime.devices.device_map_device`). Keyword arguments named after a
        component (``scheduler=...``) replace it; ``cache_dir``, ``revision``, ``local_files_only`` go to the
        Hub; ``low_cpu_mem_usage`` is accepted (:func:`~videofusion.pipelines.folders.load_pipeline_components`)."""
        device = device_map_device(device_map)  # checked before anything loads
        pipe = cls(**load_pipeline_components(pretrained_model_name_or_path, cls.component_names, variant=variant,
                                              torch_dtype=resolve_dtype(dtype, torch_dtype), **kwargs))
        return pipe if device is None else pipe.to(device)

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

    def enable_prompt_weighting(self) -> None:
        """Read prompts (and negative prompts) in sd-webui's weighting syntax, ``(word:1.3)``, ``(word)``,
        ``[word]`` (:mod:`videofusion.pipelines.prompt_weighting`). Off by default: brackets are then text."""
        self.prompt_weighting = True

    def disable_prompt_weighting(self) -> None:
        self.prompt_weighting = False

    # ------------------------------------------------------------------ LoRA adapters (diffusers' API)
    def load_lora_weights(self, pretrained_model_name_or_path_or_dict, weight_name: str | None = None,
                          adapter_name: str | None = None, **hub_kwargs) -> None:
        """Load a LoRA onto the UNet and/or text encoder: a file, a folder, a Hub id (``hub_kwargs``: cache_dir,
        revision, local_files_only, subfolder) or a state dict, in any format of :mod:`videofusion.adapters`
        (diffusers, PEFT, stable_lora, keyless ``.pt``). Named ``adapter_name`` (default ``default_<n>``),
        active with weight 1 beside the adapters already loaded (:attr:`lora` holds them)."""
        source = pretrained_model_name_or_path_or_dict
        lora = parse_state_dict(source) if isinstance(source, dict) else load_lora(source, weight_name, **hub_kwargs)
        self.lora.load(lora, adapter_name)

    def set_adapters(self, adapter_names: str | list[str], adapter_weights: float | list[float] | None = None) -> None:
        """Make ``adapter_names`` the active adapters, with ``adapter_weights`` (default 1 each)."""
        self.lora.set_active(adapter_names, adapter_weights)

    def get_active_adapters(self) -> list[str]:
        return self.lora.active()

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Component -> the adapters loaded on it."""
        return self.lora.by_component()

    def fuse_lora(self, components: list[str] = ("unet", "text_encoder"), lora_scale: float = 1.0,
                  adapter_names: list[str] | None = None) -> None:
        """Add the active adapters (or ``adapter_names``) times ``lora_scale`` into the weights: calls then run
        at the base model's speed. :meth:`unfuse_lora` restores the weights exactly."""
        self.lora.fuse(list(components), lora_scale, adapter_names)

    def unfuse_lora(self, components: list[str] = ("unet", "text_encoder")) -> None:
        self.lora.unfuse(list(components))

    def unload_lora_weights(self) -> None:
        """Every adapter out (fused ones too): the models exactly as loaded."""
        self.lora.unload()

    def delete_adapters(self, adapter_names: str | list[str]) -> None:
        self.lora.delete(adapter_names)

    # ------------------------------------------------------------------ the steps of a call
    def check_inputs(self, settings: GenerationSettings, prompt, negative_prompt, generator, latents,
                     prompt_embeds, negative_prompt_embeds, output_type: str, callback_steps,
                     cross_attention_kwargs, num_videos_per_prompt) -> int:
        """Check what a call passes besides its :class:`~videofusion.settings.GenerationSettings` (already
        checked and sized), before any model runs; returns the number of videos
        (:func:`videofusion.pipelines.inputs.check_call`)."""
        return check_call(self, settings, prompt, negative_prompt, generator, latents, prompt_embeds,
                          negative_prompt_embeds, output_type, callback_steps, cross_attention_kwargs,
                          num_videos_per_prompt)

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
        return embed_texts(self.tokenizer, self.text_encoder, texts, device, clip_skip, self.prompt_weighting)

    def prepare_latents(self, num_videos: int, settings: GenerationSettings, generator, device: torch.device,
                        dtype: torch.dtype, latents: torch.Tensor | None = None) -> torch.Tensor:
        """The initial latents ``(videos, c, f, h, w)``: ``latents`` if given, else noise drawn as the
        settings say (independent or decomposed, FreeNoise-rescheduled for a long video), scaled by the
        scheduler's initial sigma."""
        if latents is None:
            latents = long_video_latents(self.latent_shape(num_videos, settings), generator, device, dtype,
                                         settings.noise, settings.noise_ratio, settings.long_video)
        return latents.to(device) * self.scheduler.init_noise_sigma  # (b, c, f, h, w)

    def classifier_free_guidance(self, settings: GenerationSettings) -> bool:
        """Whether a call mixes two UNet predictions (conditional and negative): ``guidance_scale > 1`` and a
        UNet without embedded guidance. A guidance-distilled UNet (``unet.config.time_cond_proj_dim`` set)
        reads the weight from its ``timestep_cond`` instead (:func:`guidance_embedding`): one call per step."""
        return settings.guidance_scale > 1.0 and self.unet.config.time_cond_proj_dim is None

    def denoise(self, latents: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                settings: GenerationSettings, generator=None,
                callback: Callable[[int, int, torch.Tensor], None] | None = None, callback_steps: int = 1,
                num_steps: int | None = None) -> torch.Tensor:
        """The denoising loop over ``timesteps`` (the scheduler's, or a tail of them): latents
        ``(b, c, f, h, w)`` -> latents. ``context``: the text embeddings, negative ones first with guidance
        (:meth:`classifier_free_guidance`: the UNet sees the batch twice and the two predictions are mixed).
        A guidance-distilled UNet gets ``guidance_embedding(guidance_scale - 1)`` as ``timestep_cond`` and the
        prompts' embeddings alone (of a ``(2b, ...)`` context, the second half), as diffusers' LCM pipelines.
        ``num_steps``: the steps the progress bar counts (default ``settings.num_inference_steps``; fewer
        when a tail of the schedule runs, as in video-to-video)."""
        guided = self.classifier_free_guidance(settings)
        b, c, f, h, w = latents.shape
        cond_dim = self.unet.config.time_cond_proj_dim
        timestep_cond = None
        if cond_dim is not None:
            context = context[b:] if context.shape[0] == 2 * b else context  # (b, 77, d)
            timestep_cond = guidance_embedding(torch.full((b,), settings.guidance_scale - 1.0), cond_dim)
            timestep_cond = timestep_cond.to(device=latents.device, dtype=latents.dtype)  # (b, cond_dim)
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
                    noise_pred = unet(model_input, t, encoder_hidden_states=context, timestep_cond=timestep_cond,
                                      return_dict=False)[0]
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
        self.end_call()
        return TextToVideoSDPipelineOutput(frames=video, paths=paths) if return_dict else (video,)

    def end_call(self) -> None:
        """After a call's last model ran: model offload puts the last model back on the CPU, and the call's
        cross_attention_kwargs (its LoRA scale, the processors' keys) end with it."""
        self.placement.end_call()
        self.lora.set_call_scale(1.0)
        set_processor_kwargs(self.unet, None)

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


def guidance_embedding(w: torch.Tensor, embedding_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The guidance weight of a guidance-distilled UNet as its ``timestep_cond`` (:meth:`VideoPipeline.denoise`;
    Luo et al. 2023, "Latent Consistency Models", sec. 4.2; VDM's embedding, with diffusers' LCM numbers):
    ``[sin(1000 w f_i), cos(1000 w f_i)]``, sines first, ``f_i = 10000 ** (-i / (half - 1))`` for
    ``i < half = embedding_dim // 2``, a zero column appended when ``embedding_dim`` is odd.

    ``w``: (n,) weights in the distillation's convention, ``guidance_scale - 1`` (0: the conditional
    prediction alone). Returns (n, embedding_dim), computed in ``dtype`` (default float32).
    """
    if w.ndim != 1:
        raise ValueError(f"w: expected a (n,) tensor of guidance weights, got shape {tuple(w.shape)}")
    half = embedding_dim // 2
    step = torch.log(torch.tensor(10000.0)) / (half - 1)
    frequencies = torch.exp(torch.arange(half, dtype=dtype) * -step)  # (half,)
    args = (w * 1000.0).to(dtype)[:, None] * frequencies[None, :]  # (n, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)  # (n, 2 * half)
    return torch.nn.functional.pad(emb, (0, 1)) if embedding_dim % 2 else emb

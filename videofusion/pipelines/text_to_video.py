"""TextToVideoSDPipeline: prompt -> text embeddings -> denoised video latents -> frames.

Wiring only: the math lives in the models and schedulers, the file formats in
:mod:`videofusion.pipelines.folders` and :mod:`videofusion.io.loading`, the device moves in
:mod:`videofusion.runtime`. Numbers match diffusers' ``TextToVideoSDPipeline`` for the same
components, inputs and generator.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..io.streaming import decoded_chunks, video_writers, write_videos
from ..long_video import LongVideo, check_long_video, long_video_latents
from ..noise import NOISE_MODES
from ..runtime.fast import FastPath
from ..runtime.offload import ModelOffload, SequentialOffload, accelerator_device, warn_no_accelerator
from ..runtime.streamed import DEFAULT_BLOCK_BYTES, StreamedOffload

OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def check_sizes(height: int, width: int, num_frames: int, num_inference_steps: int,
                num_videos_per_prompt: int = 1) -> None:
    """ValueError naming the argument unless each is an integer >= 1 and height, width are divisible by 8.
    Cheap: front ends call it before loading a model."""
    for name, value in (("height", height), ("width", width), ("num_frames", num_frames),
                        ("num_inference_steps", num_inference_steps),
                        ("num_videos_per_prompt", num_videos_per_prompt)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if height % 8 or width % 8:
        raise ValueError(f"height and width: must be divisible by 8, got height={height}, width={width}")


@dataclass
class TextToVideoSDPipelineOutput:
    """``frames``: np ``(batch, num_frames, height, width, 3)`` float in [0, 1] for ``"np"``; torch
    ``(batch, num_frames, 3, height, width)`` for ``"pt"``; a list (per video) of lists of PIL images
    for ``"pil"``; the latents ``(batch, channels, num_frames, height/8, width/8)`` for ``"latent"``."""

    frames: Any
    paths: list[str] | None = None  # the files written by a call with output_path (frames is None then)

    def __getitem__(self, index: int):
        return (self.frames,)[index]


class TextToVideoSDPipeline:
    """Text-to-video with a UNet3D denoiser (ModelScope text-to-video, zeroscope v2).

    Components: ``vae`` (:class:`~videofusion.models.AutoencoderKL`), ``text_encoder`` (transformers
    ``CLIPTextModel``), ``tokenizer`` (``CLIPTokenizer``), ``unet``
    (:class:`~videofusion.models.UNet3DConditionModel`) and ``scheduler`` (any of
    :mod:`videofusion.schedulers`).
    """

    component_names = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.unet = unet
        self.scheduler = scheduler
        self._progress_bar_config: dict = {}
        self._offload: ModelOffload | None = None
        self._sequential: SequentialOffload | None = None
        self._fast: FastPath | None = None
        self._fast_auto = True  # turn the fast path on at the first call on CUDA

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, *, torch_dtype: torch.dtype | None = None,
                        variant: str | None = None, **kwargs) -> "TextToVideoSDPipeline":
        """Load a diffusers-format pipeline folder or Hub id (``model_index.json`` + one subfolder per
        component). ``variant="fp16"`` reads the ``*.fp16.*`` weight files; ``torch_dtype`` casts the
        models. Keyword arguments named after a component (``scheduler=...``, ``unet=...``) replace
        that component; ``cache_dir``, ``revision`` and ``local_files_only`` go to the Hub."""
        from .folders import load_pipeline_components
        components = load_pipeline_components(pretrained_model_name_or_path, cls.component_names,
                                              torch_dtype=torch_dtype, variant=variant, **kwargs)
        return cls(**components)

    def save_pretrained(self, save_directory: str, *, variant: str | None = None,
                        safe_serialization: bool = True) -> None:
        """Write a diffusers-format folder (``model_index.json`` + components) that diffusers loads."""
        from .folders import save_pipeline
        save_pipeline(type(self).__name__, self.components, save_directory, variant=variant,
                      safe_serialization=safe_serialization)

    @property
    def components(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.component_names}

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.text_encoder, self.unet, self.vae) if isinstance(m, torch.nn.Module)]

    # ------------------------------------------------------------------ devices and memory options
    def to(self, *args, **kwargs) -> "TextToVideoSDPipeline":
        """Move (and/or cast) every model, like ``nn.Module.to``: ``pipe.to("cuda")``,
        ``pipe.to(torch.float16)``, ``pipe.to("cuda", torch.float16)``."""
        if self._offload is not None or self._sequential is not None:
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
        if self._offload is not None:
            return self._offload.device
        if self._sequential is not None:
            return self._sequential.device
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2 ** (number of VAE blocks - 1), 8 for the published checkpoints."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def set_progress_bar_config(self, **kwargs) -> None:
        """Options for the tqdm bar over the denoising steps (``disable=True`` hides it)."""
        self._progress_bar_config = kwargs

    def progress_bar(self, total: int):
        return tqdm(total=total, **self._progress_bar_config)

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

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep the models in CPU memory and move each whole model to the accelerator while it runs
        (text encoder, then UNet, then VAE). With no accelerator this warns and changes nothing."""
        target = accelerator_device(gpu_id, device)
        if target is None:
            warn_no_accelerator("enable_model_cpu_offload")
            return
        self.disable_cpu_offload()
        self.disable_fast_path()  # offload moves weights under the compiled graph's feet
        for module in self._modules():
            module.to("cpu")
        self._offload = ModelOffload(target)

    def enable_sequential_cpu_offload(self, gpu_id: int | None = None, device: torch.device | str | None = None) -> None:
        """Keep every weight in CPU memory and move each layer's weights to the accelerator only for
        its forward call: the least accelerator memory. On CUDA this is :meth:`enable_streamed_offload`
        with ``max_blocks=2`` (copies overlap compute); elsewhere each layer's copy waits (much slower).
        With no accelerator this warns and changes nothing."""
        target = accelerator_device(gpu_id, device)
        if target is None:
            warn_no_accelerator("enable_sequential_cpu_offload")
            return
        if target.type == "cuda":
            self.enable_streamed_offload(max_blocks=2, device=target)
            return
        self.disable_cpu_offload()
        self.disable_fast_path()  # offload moves weights under the compiled graph's feet
        self._sequential = SequentialOffload(target)
        for module in self._modules():
            self._sequential.attach(module)

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
            warn_no_accelerator("enable_streamed_offload")
            return
        offload = StreamedOffload(target, max_blocks=max_blocks, block_bytes=block_bytes)  # checks arguments
        self.disable_cpu_offload()
        self.disable_fast_path()  # offload moves weights under the compiled graph's feet
        self._sequential = offload
        for module in self._modules():
            self._sequential.attach(module)

    def enable_frame_chunking(self, frames_per_chunk: int = 8, pixels_per_chunk: int | None = None) -> None:
        """Run the UNet's per-frame layers over chunks of frames and its temporal layers over chunks of
        pixels, so activation memory inside a layer stops growing with ``num_frames``. Exact up to
        rounding (see :meth:`UNet3DConditionModel.enable_frame_chunking`)."""
        self.unet.enable_frame_chunking(frames_per_chunk, pixels_per_chunk)

    def disable_frame_chunking(self) -> None:
        self.unet.disable_frame_chunking()

    def enable_fast_path(self, fuse_qkv: bool = True, channels_last: bool = True, compile: bool = True,
                         mode: str = "max-autotune-no-cudagraphs", backend: str = "inductor") -> None:
        """Run the UNet on the fast path (:mod:`videofusion.runtime.fast`): fused attention projections,
        channels-last convolutions, ``torch.compile`` (``mode`` and ``backend`` are torch.compile's).
        On by default when the pipeline runs on CUDA; the first call at a new size compiles (minutes
        with autotuning; cached on disk for later processes). Same outputs up to rounding. Not
        combinable with CPU offload, and the fused weights do not follow later weight updates: call
        again after changing the UNet's weights."""
        if self._offload is not None or self._sequential is not None:
            raise ValueError("enable_fast_path: not combinable with CPU offload; call disable_cpu_offload() first")
        self.disable_fast_path()
        self._fast = FastPath(fuse_qkv=fuse_qkv, channels_last=channels_last, compile=compile, mode=mode,
                              backend=backend).apply(self.unet)

    def disable_fast_path(self) -> None:
        """Back to the plain eager UNet (and no automatic fast path on CUDA)."""
        if self._fast is not None:
            self._fast.remove(self.unet)
            self._fast = None
        self._fast_auto = False

    def _unet_forward(self, device: torch.device):
        """The UNet callable of this call: the fast path when enabled, or automatically on CUDA."""
        if (self._fast is None and self._fast_auto and device.type == "cuda" and self._offload is None
                and self._sequential is None):
            self.enable_fast_path()
        return self._fast.forward(self.unet) if self._fast is not None else self.unet

    def disable_cpu_offload(self) -> None:
        """Turn model or sequential offload off; the models are left on the CPU."""
        if self._offload is not None:
            self._offload.release()
            self._offload = None
        if self._sequential is not None:
            self._sequential.detach()
            self._sequential = None

    def _onload(self, module) -> None:
        if self._offload is not None:
            self._offload.load(module)

    # ------------------------------------------------------------------ the steps of a call
    def encode_prompt(self, prompt: str | list[str] | None, device: torch.device, num_videos_per_prompt: int,
                      do_classifier_free_guidance: bool, negative_prompt: str | list[str] | None = None,
                      prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                      clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """CLIP embeddings ``(batch * num_videos_per_prompt, 77, dim)`` of the prompts and, with
        guidance, of the negative prompts (empty strings by default)."""
        self._onload(self.text_encoder)
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
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)  # (n, 77)
        if clip_skip is None:
            return self.text_encoder(ids)[0]
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        return self.text_encoder.text_model.final_layer_norm(hidden)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``(b, c, f, h, w)`` -> video ``(b, 3, f, 8h, 8w)`` float32 in [-1, 1] (roughly)."""
        b, c, f, h, w = latents.shape
        latents = latents / self.vae.config.scaling_factor
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
        images = self.vae.decode(frames).sample  # (b*f, 3, H, W)
        video = images.reshape(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)  # (b, 3, f, H, W)
        return video.float()

    def check_inputs(self, prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                     negative_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds,
                     output_type, callback_steps, cross_attention_kwargs, num_videos_per_prompt,
                     noise, noise_ratio, long_video=None) -> int:
        """Validate a call's arguments before any model runs; returns the number of videos."""
        check_long_video(long_video)
        check_sizes(height, width, num_frames, num_inference_steps, num_videos_per_prompt)
        if not isinstance(guidance_scale, numbers.Real):
            raise ValueError(f"guidance_scale: must be a number, got {guidance_scale!r}")
        if not isinstance(eta, numbers.Real) or eta < 0:
            raise ValueError(f"eta: must be a number >= 0, got {eta!r}")
        if eta > 0 and not getattr(self.scheduler, "accepts_eta", False):
            raise ValueError(f"eta: only schedulers with an eta (DDIM) use it; {type(self.scheduler).__name__} "
                             "does not, so pass eta=0")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type: {output_type!r} is not one of {list(OUTPUT_TYPES)}")
        if callback_steps is None or isinstance(callback_steps, bool) or not isinstance(callback_steps, int) \
                or callback_steps <= 0:
            raise ValueError(f"callback_steps: must be a positive integer, got {callback_steps!r}")
        if cross_attention_kwargs:
            raise ValueError(f"cross_attention_kwargs: videofusion's attention takes no extra arguments, "
                             f"got {sorted(cross_attention_kwargs)}")
        if noise not in NOISE_MODES:
            raise ValueError(f"noise: {noise!r} is not one of {list(NOISE_MODES)}")
        if not isinstance(noise_ratio, numbers.Real) or not 0 <= noise_ratio <= 1:
            raise ValueError(f"noise_ratio: must be in [0, 1], got {noise_ratio!r}")

        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("prompt and prompt_embeds: pass exactly one of them")
        if prompt is not None:
            if isinstance(prompt, str):
                batch = 1
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                batch = len(prompt)
            else:
                raise ValueError(f"prompt: must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        else:
            if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.ndim != 3:
                raise ValueError("prompt_embeds: must be a tensor (batch, tokens, dim)")
            batch = prompt_embeds.shape[0]
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("negative_prompt and negative_prompt_embeds: pass at most one of them")
        if negative_prompt is not None:
            if isinstance(negative_prompt, list):
                if len(negative_prompt) != batch or not all(isinstance(p, str) for p in negative_prompt):
                    raise ValueError(f"negative_prompt: a list of {len(negative_prompt)} was passed for "
                                     f"{batch} prompt(s); pass one string or one per prompt")
            elif not isinstance(negative_prompt, str):
                raise ValueError(f"negative_prompt: must be a string or a list of strings, "
                                 f"got {type(negative_prompt).__name__}")
        if negative_prompt_embeds is not None:
            if prompt_embeds is None or negative_prompt_embeds.shape != prompt_embeds.shape:
                raise ValueError("negative_prompt_embeds: must come with prompt_embeds of the same shape")
        total = batch * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) not in (1, total):
            raise ValueError(f"generator: a list of {len(generator)} generators was passed for {total} video(s) "
                             f"({batch} prompt(s) x num_videos_per_prompt={num_videos_per_prompt}); "
                             "pass one per video or a single generator")
        if latents is not None:
            expected = (total, self.unet.config.in_channels, num_frames,
                        height // self.vae_scale_factor, width // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"latents: expected shape {expected} (batch, channels, num_frames, "
                                 f"height/{self.vae_scale_factor}, width/{self.vae_scale_factor}), "
                                 f"got {tuple(latents.shape)}")
        return total

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

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, height: int | None = None,
                 width: int | None = None, num_frames: int = 16, num_inference_steps: int = 50,
                 guidance_scale: float = 9.0, negative_prompt: str | list[str] | None = None,
                 eta: float = 0.0, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "np",
                 return_dict: bool = True, callback: Callable[[int, int, torch.Tensor], None] | None = None,
                 callback_steps: int = 1, cross_attention_kwargs: dict | None = None,
                 clip_skip: int | None = None, num_videos_per_prompt: int = 1,
                 noise: str = "independent", noise_ratio: float = 0.5, long_video: LongVideo | None = None,
                 output_path: str | list[str] | None = None, output_fps: float = 8):
        """Generate videos from text.

        Args:
            prompt: the text, or a list of texts (one video each, times ``num_videos_per_prompt``).
            height, width: pixels, divisible by 8; default ``unet.config.sample_size * vae_scale_factor``
                (256 for the ModelScope checkpoint).
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
            cross_attention_kwargs: accepted for compatibility; must be empty.
            clip_skip: use the CLIP hidden state this many layers before the last.
            num_videos_per_prompt: videos per prompt (default 1).
            noise, noise_ratio: ``"independent"`` (default) or VideoFusion's ``"decomposed"`` initial noise
                with a shared base of weight ``noise_ratio`` (see :func:`videofusion.noise.initial_latents`).
            long_video: ``LongVideo(window=16, stride=4)`` for videos longer than the model was trained
                on: windowed temporal attention and noise rescheduling (FreeNoise, see
                :mod:`videofusion.long_video`); no change when ``num_frames <= window``.
            output_path, output_fps: write the video(s) as H.264 mp4 at ``output_fps`` (a path, or one per
                video), decoded and encoded chunk by chunk (VAE slicing's chunk); then ``frames`` is None
                and ``paths`` lists the files.
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        total = self.check_inputs(prompt, height, width, num_frames, num_inference_steps, guidance_scale,
                                  negative_prompt, eta, generator, latents, prompt_embeds, negative_prompt_embeds,
                                  output_type, callback_steps, cross_attention_kwargs, num_videos_per_prompt,
                                  noise, noise_ratio, long_video)
        if output_path is not None and output_type == "latent":
            raise ValueError("output_path: cannot write a video with output_type='latent'")
        writers = video_writers(output_path, total, output_fps)
        device = self.device
        if device.type == "cpu" and self.dtype == torch.float16:
            warnings.warn("float16 on the CPU runs on slow fallback kernels (often 10-20x slower than "
                          "float32); load with torch_dtype=torch.float32 or torch.bfloat16 for CPU runs",
                          stacklevel=2)
        self.scheduler.set_timesteps(num_inference_steps, device=device)  # validates the step count
        timesteps = self.scheduler.timesteps
        guided = guidance_scale > 1.0

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt, device, num_videos_per_prompt, guided, negative_prompt, prompt_embeds,
            negative_prompt_embeds, clip_skip)
        context = torch.cat([negative_prompt_embeds, prompt_embeds]) if guided else prompt_embeds  # (2b, 77, d)

        shape = (total, self.unet.config.in_channels, num_frames,
                 height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = long_video_latents(shape, generator, device, prompt_embeds.dtype, noise, noise_ratio, long_video)
        latents = latents.to(device) * self.scheduler.init_noise_sigma  # (b, c, f, h, w)

        # The scheduler steps on frames folded into the batch, as diffusers does, so stochastic
        # schedulers draw the same noise; with one generator per video, each video's frames share it.
        step_generator = generator
        if isinstance(generator, (list, tuple)) and len(generator) > 1:
            step_generator = [g for g in generator for _ in range(num_frames)]
        step_kwargs = {"generator": step_generator}
        if getattr(self.scheduler, "accepts_eta", False):
            step_kwargs["eta"] = eta

        self._onload(self.unet)
        self.unet.set_temporal_window(*((long_video.window, long_video.stride) if long_video else (None,)))
        unet = self._unet_forward(device)
        order = self.scheduler.order
        num_warmup_steps = len(timesteps) - num_inference_steps * order
        with self.progress_bar(total=num_inference_steps) as bar:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if guided else latents  # (2b, c, f, h, w)
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = unet(model_input, t, encoder_hidden_states=context, return_dict=False)[0]
                if guided:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)

                b, c, f, h, w = latents.shape
                flat = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
                flat_pred = noise_pred.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # (b*f, c, h, w)
                flat = self.scheduler.step(flat_pred, t, flat, **step_kwargs).prev_sample
                latents = flat.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)  # (b, c, f, h, w)

                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % order == 0):
                    bar.update()
                    if callback is not None and i % callback_steps == 0:
                        callback(i // order, t, latents)

        self.unet.set_temporal_window(None)
        paths = None
        if output_type == "latent":
            video = latents
        elif writers is None and not self.vae.use_slicing:
            self._onload(self.vae)
            video = self.postprocess(self.decode_latents(latents), output_type)
        else:  # chunk by chunk off the device (decode.py), into the encoder or a CPU tensor
            self._onload(self.vae)
            chunks = decoded_chunks(self.decode_latents, latents, self.vae.slice_size if self.vae.use_slicing
                                    else num_frames)  # (b, 3, n, H, W) each, on the CPU
            if writers is not None:
                video, paths = None, write_videos((self.postprocess(c, "pt") for c in chunks), writers)
            else:
                video = self.postprocess(torch.cat(list(chunks), dim=2), output_type)
        if self._offload is not None:
            self._offload.release()
        return TextToVideoSDPipelineOutput(frames=video, paths=paths) if return_dict else (video,)

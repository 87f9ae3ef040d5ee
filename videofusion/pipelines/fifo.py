"""FIFO-Diffusion (Kim, Kang, Choi & Han, NeurIPS 2024, "FIFO-Diffusion: Generating Infinite Videos from
Text without Training", arXiv:2405.11473): long videos from a model trained on short clips, in the memory of
a short clip.

A queue holds one frame per noise level, least noisy at the head. Each step denoises the whole queue by one
level with UNet calls over ``window`` consecutive frames (latent partitioning: the queue is ``num_partitions``
windows long), each frame at its own timestep; the frame at the head is then clean and leaves, and fresh
noise enters at the tail. With lookahead denoising the windows move by half a window and keep only the later
half of their output, so every frame is denoised with half a window of less noisy frames before it; the
finished frames stay in front of the queue as that context. The queue starts from a plain ``window``-frame
generation, noised to the diagonal's levels (forward diffusion), and the frames that come out before the
first of those (``n * window - window`` of them, copies of its first frame) are dropped.

:func:`sample_fifo` is the loop (a generator of the frames leaving the queue); :func:`generate_fifo` is the
pipeline call around it (first window, queue, decoding and writing frames as they leave). The option is
:class:`videofusion.long_video.FIFO`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from tqdm.auto import tqdm

from ..io.streaming import write_videos
from ..long_video import FIFO, QueueNoise
from ..settings import GenerationSettings
from .core import TextToVideoSDPipelineOutput, guidance_embedding

# Schedulers whose step needs only (model output, timestep, sample): a frame can take its step at its own
# timestep, alone. The others keep state across steps (multistep histories, step counters, sigma indices).
FIFO_SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")

Denoise = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def check_fifo(fifo: FIFO, scheduler, latents: torch.Tensor | None) -> None:
    """Refuse what FIFO-Diffusion cannot run, before any model runs."""
    name = type(scheduler).__name__
    if name not in FIFO_SCHEDULERS:
        raise ValueError(f"long_video=FIFO(...): needs a scheduler whose step depends on the current timestep "
                         f"only ({', '.join(FIFO_SCHEDULERS)}); {name} keeps state across steps. Set "
                         f"pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config) (CLI: --scheduler ddim)")
    if latents is not None:
        raise ValueError("latents: not accepted with long_video=FIFO(...): the queue draws its noise frame by "
                         "frame as frames enter it; pass a generator instead")
    if fifo.num_levels > scheduler.config.num_train_timesteps:
        raise ValueError(f"num_partitions: {fifo.num_partitions} x window {fifo.window} noise levels exceed the "
                         f"scheduler's {scheduler.config.num_train_timesteps} training timesteps")


def sample_fifo(denoise: Denoise, queue: torch.Tensor, fresh_noise: Callable[[], torch.Tensor], num_steps: int,
                window: int, stride: int, callback: Callable[[int, torch.Tensor], None] | None = None,
                ) -> Iterator[torch.Tensor]:
    """FIFO-Diffusion's sampling loop (Kim et al. 2024, Algorithm 1 with latent partitioning, sec. 4.2, and
    lookahead denoising, sec. 4.3): yields the ``num_steps`` frames that leave the queue, ``(b, c, 1, h, w)``.

    queue: ``(b, c, head + L, h, w)`` with ``head = window - stride``; position ``head + k`` holds a frame at
        noise level ``k`` (0 the least noisy, ``L - 1`` the noisiest), the first ``head`` positions hold
        finished frames (context only, at level 0). ``L`` must be a multiple of ``stride``. Not modified.
    denoise: ``denoise(x, levels, first)``: ``x`` ``(b, c, window, h, w)`` consecutive queue frames, ``levels``
        ``(window,)`` int64 their noise levels; returns frames ``first:`` of ``x`` one level less noisy
        ``(b, c, window - first, h, w)`` (level 0 -> clean).
    fresh_noise: ``() -> (b, c, 1, h, w)``, the frame entering at the tail (level ``L - 1``) after each step.
    stride: frames between window starts: ``window`` (plain partitioning) or ``window // 2`` (lookahead).
    callback: ``callback(step, queue)`` after each step, before the head frame leaves.
    num_steps: frames to let out (steps to run); the loop itself has no end (FIFO: "infinite" videos).

    Each step runs ``L // stride`` windows ``[s, s + window)``, ``s = 0, stride, ...``, from the tail to the
    head, each keeping its last ``stride`` frames, so every window reads frames not yet moved this step and
    every frame moves exactly one level.
    """
    head = window - stride
    num_levels = queue.shape[2] - head
    if stride < 1 or head < 0 or num_levels < stride or num_levels % stride:
        raise ValueError(f"queue: {queue.shape[2]} frames do not fit window {window}, stride {stride} "
                         "(need window - stride finished frames + a multiple of stride levels)")
    positions = torch.arange(queue.shape[2], device=queue.device)
    levels = (positions - head).clamp(min=0)  # (head + L,): the finished frames count as level 0
    queue = queue.clone()
    for step in range(num_steps):
        for start in reversed(range(0, num_levels, stride)):  # tail first: windows read unmoved frames
            moved = denoise(queue[:, :, start:start + window], levels[start:start + window], head)
            queue[:, :, start + head:start + window] = moved  # (b, c, stride, h, w)
        if callback is not None:
            callback(step, queue)
        yield queue[:, :, head:head + 1].clone()  # clean now: leaves the queue
        queue = torch.cat([queue[:, :, 1:], fresh_noise()], dim=2)  # (b, c, head + L, h, w)


def initial_queue(first: torch.Tensor, alphas_cumprod: torch.Tensor, noise: torch.Tensor, head: int) -> torch.Tensor:
    """The queue at the start: the clean first window ``first`` ``(b, c, f, h, w)`` noised to the diagonal.

    alphas_cumprod: ``(L,)`` the cumulative alpha of each level (level 0 the least noisy); noise:
    ``(b, c, head + L, h, w)``. Position ``head + k`` gets frame ``max(0, k - (L - f))`` of ``first``
    (the last ``f`` levels hold the window in order, the levels below it copies of its first frame) as
    ``sqrt(abar_k) x0 + sqrt(1 - abar_k) noise``; the ``head`` finished frames are its first frame at level 0.
    """
    f, num_levels = first.shape[2], alphas_cumprod.shape[0]
    k = (torch.arange(head + num_levels, device=first.device) - head).clamp(min=0)  # level of each position
    frames = (k - (num_levels - f)).clamp(min=0)  # frame of ``first`` at each position
    abar = alphas_cumprod.to(first.device, first.dtype)[k].reshape(1, 1, -1, 1, 1)  # (1, 1, head + L, 1, 1)
    return abar.sqrt() * first[:, :, frames] + (1 - abar).sqrt() * noise


def _chunks(frames: Iterable[torch.Tensor], size: int) -> Iterator[torch.Tensor]:
    """Consecutive ``(b, c, 1, h, w)`` frames grouped ``size`` at a time into ``(b, c, <=size, h, w)``."""
    buffer = []
    for frame in frames:
        buffer.append(frame)
        if len(buffer) == size:
            yield torch.cat(buffer, dim=2)
            buffer = []
    if buffer:
        yield torch.cat(buffer, dim=2)


def generate_fifo(pipe, fifo: FIFO, settings: GenerationSettings, context: torch.Tensor, num_videos: int,
                  generator, writers, output_type: str, callback=None, callback_steps: int = 1,
                  return_dict: bool = True):
    """The text-to-video call with ``long_video=fifo`` from the prompt embeddings on: ``context`` (negative
    embeddings first when ``settings.guidance_scale > 1``). Returns the pipeline's output, as
    :meth:`VideoPipeline.output` does: ``frames`` (or ``paths`` when ``writers`` write the videos).

    Finished frames are decoded a chunk at a time as they leave the queue (VAE slicing's
    ``frames_per_chunk`` when it is on, else one window's worth) and written, or collected.
    """
    scheduler, device, dtype = pipe.scheduler, context.device, context.dtype
    b, c, num_frames, h, w = pipe.latent_shape(num_videos, settings)
    guided = pipe.classifier_free_guidance(settings)
    noise = QueueNoise((b, c, h, w), generator, device, dtype, settings.noise, settings.noise_ratio)

    # 1. the first window, generated as usual (num_inference_steps): what the queue starts from
    first = pipe.denoise(noise(fifo.window) * scheduler.init_noise_sigma, scheduler.timesteps, context,
                         settings.replace(num_frames=fifo.window, long_video=None), generator)  # (b, c, f, h, w)

    # 2. the queue: one frame per level of an L-step schedule (level k <-> timesteps[L - 1 - k])
    num_levels, head = fifo.num_levels, fifo.head
    scheduler.set_timesteps(num_levels, device=device)
    timesteps = scheduler.timesteps  # (L,) descending
    alphas = scheduler.alphas_cumprod[timesteps.cpu().flip(0)]  # (L,) level 0 first
    queue = initial_queue(first, alphas, noise(head + num_levels), head)  # (b, c, head + L, h, w)

    pipe.placement.onload(pipe.unet)
    pipe.unet.set_temporal_window(None)
    unet = pipe.placement.unet_forward(pipe.unet)
    step_kwargs = {"generator": generator, **({"eta": settings.eta} if scheduler.accepts_eta else {})}
    timestep_cond, cond_dim = None, pipe.unet.config.time_cond_proj_dim
    if cond_dim is not None:  # a guidance-distilled UNet reads the weight here (as VideoPipeline.denoise)
        context = context[b:] if context.shape[0] == 2 * b else context  # (b, 77, d)
        timestep_cond = guidance_embedding(torch.full((b,), settings.guidance_scale - 1.0), cond_dim)
        timestep_cond = timestep_cond.to(device=device, dtype=queue.dtype)  # (b, cond_dim)

    def denoise(x: torch.Tensor, levels: torch.Tensor, keep: int) -> torch.Tensor:
        pipe.placement.onload(pipe.unet)
        t = timesteps[num_levels - 1 - levels]  # (f,) one timestep per frame
        model_input = torch.cat([x] * 2) if guided else x  # (2b, c, f, h, w); DDIM/DDPM scale nothing
        pred = unet(model_input, t.expand(model_input.shape[0], -1), encoder_hidden_states=context,
                    timestep_cond=timestep_cond, return_dict=False)[0]  # timesteps (2b, f)
        if guided:
            uncond, cond = pred.chunk(2)
            pred = uncond + settings.guidance_scale * (cond - uncond)
        # each frame steps alone at its own timestep (stateless schedulers only, see FIFO_SCHEDULERS)
        return torch.cat([scheduler.step(pred[:, :, j:j + 1], t[j], x[:, :, j:j + 1], **step_kwargs).prev_sample
                          for j in range(keep, x.shape[2])], dim=2)  # (b, c, f - keep, h, w)

    def report(step: int, q: torch.Tensor) -> None:
        if callback is not None and step % callback_steps == 0:
            callback(step, timesteps[-1], q)

    warmup = num_levels - fifo.window  # frames out before the first window's first frame: dropped
    bar = tqdm(total=warmup + num_frames, **{"unit": "frame", **pipe._progress_bar_config})

    def kept() -> Iterator[torch.Tensor]:
        with bar:
            for i, frame in enumerate(sample_fifo(denoise, queue, noise, warmup + num_frames, fifo.window,
                                                  fifo.stride, report)):
                bar.update()
                if i >= warmup:
                    yield frame  # (b, c, 1, h, w)

    # 3. decoded chunk by chunk as frames leave, into the writers or collected
    size = pipe.vae.slice_size if pipe.vae.use_slicing else fifo.window
    chunks = _chunks(kept(), size)  # latents (b, c, <=size, h, w)
    paths = video = None
    if output_type == "latent":
        video = torch.cat(list(chunks), dim=2)
    else:
        def decoded() -> Iterator[torch.Tensor]:
            for chunk in chunks:
                pipe.placement.onload(pipe.vae)
                yield pipe.decode_latents(chunk).cpu()  # (b, 3, n, H, W)
        if writers is not None:
            paths = write_videos((pipe.postprocess(chunk, "pt") for chunk in decoded()), writers)
        else:
            video = pipe.postprocess(torch.cat(list(decoded()), dim=2), output_type)
    pipe.end_call()
    return TextToVideoSDPipelineOutput(frames=video, paths=paths) if return_dict else (video,)

"""Long videos from a model trained on short clips: FreeNoise (Qiu et al. 2023, "FreeNoise: Tuning-Free
Longer Video Diffusion via Noise Rescheduling", arXiv:2310.15169).

Two changes, both off unless a :class:`LongVideo` is passed to the pipeline call:

1. *Window-based attention fusion*: every temporal self-attention attends only within overlapping
   windows of ``window`` frames, moved by ``stride`` frames (the last window is aligned to the end);
   a frame covered by several windows gets the weighted mean of their outputs, weights rising
   linearly towards the window centre (FreeNoise's / diffusers' "pyramid" weighting).
2. *Noise rescheduling*: only the first ``window`` frames draw fresh noise; each later block of
   ``stride`` frames is a random permutation of the block that leaves the window as it moves on,
   so every window ``[k*stride, k*stride + window)`` holds a permutation of the first window's noise.

With ``num_frames <= window`` neither changes anything. VideoFusion's decomposed noise (a base shared
by all frames plus a per-frame residual) combines with it: the first window is drawn decomposed and
its frames are rescheduled, so the base stays shared and the residuals are shuffled.

This module holds the option and the noise; the attention windows are the model's
(:mod:`videofusion.models.windows`, switched on per call with ``unet.set_temporal_window``).

:class:`FIFO` is the other long-video option: FIFO-Diffusion (Kim et al., NeurIPS 2024), a queue of
frames at increasing noise levels denoised along the diagonal (the loop is
:mod:`videofusion.pipelines.fifo`); :class:`QueueNoise` draws its fresh noise frame by frame.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .noise import NOISE_MODES, Generator, initial_latents, randn


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LongVideo:
    """The long-video option of a pipeline call: ``pipe(prompt, num_frames=64, long_video=LongVideo())``.

    window: frames each temporal attention sees at once (default 16, the ModelScope training length).
    stride: frames between window starts, 1 <= stride <= window (default 4; smaller is smoother, slower).
    reschedule_noise: FreeNoise's noise rescheduling (default True); False keeps fresh noise per frame.
    """

    window: int = 16
    stride: int = 4
    reschedule_noise: bool = True

    def __post_init__(self):
        _positive_int("window", self.window)
        _positive_int("stride", self.stride)
        if self.stride > self.window:
            raise ValueError(f"stride: must be at most window ({self.window}), got {self.stride}")
        if not isinstance(self.reschedule_noise, bool):
            raise TypeError(f"reschedule_noise: must be True or False, got {self.reschedule_noise!r}")


# ---------------------------------------------------------------------------------------------
# noise


def rescheduled_frames(num_frames: int, window: int, stride: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Source frame (in ``[0, window)``) of each of ``num_frames`` frames under FreeNoise's noise
    rescheduling, as a (num_frames,) int64 tensor.

    Frames ``[0, window)`` are themselves; for ``i = window, window + stride, ...`` the block
    ``[i, i + stride)`` takes a random permutation (``torch.randperm(stride, generator=generator)``,
    cut to the frames left) of the block ``[i - window, i - window + stride)``, the one that leaves
    the window as it moves from ``i - window`` to ``i - window + stride``. So every window starting
    at a multiple of ``stride`` holds each first-window frame exactly once (diffusers'
    ``shuffle_context`` order of draws).
    """
    source = list(range(min(window, num_frames)))
    device = generator.device if generator is not None else torch.device("cpu")
    for i in range(window, num_frames, stride):
        perm = torch.randperm(stride, generator=generator, device=device).tolist()
        block = source[i - window:i - window + stride]
        source += [block[p] for p in perm][:num_frames - i]
    return torch.tensor(source, dtype=torch.long)


def reschedule_noise(noise: torch.Tensor, num_frames: int, window: int, stride: int,
                     generator: Generator = None) -> torch.Tensor:
    """Extend first-window noise ``(b, c, window, h, w)`` to ``(b, c, num_frames, h, w)`` with
    :func:`rescheduled_frames`. A list of generators draws video ``i``'s permutations from
    ``generator[i]`` (same video for the same seed, whatever the batch); a single generator (or None)
    draws one order for the whole batch."""
    if noise.shape[2] != min(window, num_frames):
        raise ValueError(f"noise: expected {min(window, num_frames)} frames (the first window), got {noise.shape[2]}")
    if isinstance(generator, (list, tuple)) and len(generator) > 1:
        if len(generator) != noise.shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators for a batch of {noise.shape[0]}")
        return torch.stack([video[:, rescheduled_frames(num_frames, window, stride, g).to(noise.device)]
                            for video, g in zip(noise, generator)])  # (b, c, f, h, w)
    if isinstance(generator, (list, tuple)):
        generator = generator[0]
    return noise[:, :, rescheduled_frames(num_frames, window, stride, generator).to(noise.device)]


def long_video_latents(shape: Sequence[int], generator: Generator = None, device: torch.device | str | None = None,
                       dtype: torch.dtype | None = None, noise: str = "independent", noise_ratio: float = 0.5,
                       long_video: LongVideo | None = None) -> torch.Tensor:
    """Initial latents ``(b, c, num_frames, h, w)``: :func:`videofusion.noise.initial_latents` for the
    first ``long_video.window`` frames (independent or decomposed), rescheduled to ``num_frames``.
    Identical to ``initial_latents(shape, ...)`` when ``long_video`` is None, its
    ``reschedule_noise`` is False, or ``num_frames <= window``."""
    b, c, num_frames, h, w = shape
    if long_video is None or not long_video.reschedule_noise or num_frames <= long_video.window:
        return initial_latents(shape, generator, device, dtype, noise, noise_ratio)
    first = initial_latents((b, c, long_video.window, h, w), generator, device, dtype, noise, noise_ratio)
    return reschedule_noise(first, num_frames, long_video.window, long_video.stride, generator)


# ---------------------------------------------------------------------------------------------
# FIFO-Diffusion


@dataclass(frozen=True)
class FIFO(LongVideo):
    """FIFO-Diffusion (Kim et al. 2024, "FIFO-Diffusion: Generating Infinite Videos from Text without
    Training", arXiv:2405.11473) as the long-video option of a pipeline call:
    ``pipe(prompt, num_frames=256, long_video=FIFO())``; CLI ``--long-video fifo``.

    A queue of ``num_partitions * window`` frames, one per noise level, is denoised along the diagonal:
    every UNet call sees ``window`` consecutive frames at increasing noise levels, each step moves every
    frame one level down, the clean frame at the head leaves (and is decoded and written) and fresh
    noise enters at the tail. Memory and time per frame do not grow with ``num_frames``.

    window: frames per UNet call, the length the model was trained on (default 16: ModelScope, zeroscope
        and the demo model; the paper's ``f``).
    num_partitions: latent partitioning, the paper's ``n`` (default 4, the paper's): the queue holds
        ``n * window`` frames at ``n * window`` noise levels, so the diagonal runs ``n * window`` denoising
        steps (64 by default), whatever ``num_inference_steps`` says (that one sets the steps of the first
        window, the plain generation the queue starts from).
    lookahead: lookahead denoising (default True, the paper's): windows move by ``window // 2`` frames and
        keep only the later half of their output, so each frame is denoised with ``window // 2`` less
        noisy frames before it; twice the UNet calls. Needs an even ``window``.

    A FIFO is a :class:`LongVideo` (every front end that takes the long-video option takes it): its
    ``stride`` is the distance between windows in the queue (``window // 2`` with lookahead, else
    ``window``) and ``reschedule_noise`` is False. With ``num_frames <= window`` it changes nothing.
    """

    stride: int = field(default=8, init=False, repr=False)
    reschedule_noise: bool = field(default=False, init=False, repr=False)
    num_partitions: int = 4
    lookahead: bool = True

    def __post_init__(self):
        _positive_int("window", self.window)
        _positive_int("num_partitions", self.num_partitions)
        if not isinstance(self.lookahead, bool):
            raise TypeError(f"lookahead: must be True or False, got {self.lookahead!r}")
        if self.lookahead and (self.window < 2 or self.window % 2):
            raise ValueError(f"window: lookahead denoising needs an even window >= 2, got {self.window} "
                             "(or pass lookahead=False)")
        object.__setattr__(self, "stride", self.window // 2 if self.lookahead else self.window)
        object.__setattr__(self, "reschedule_noise", False)

    @property
    def num_levels(self) -> int:
        """Noise levels on the diagonal = frames in the queue = denoising steps: ``num_partitions * window``."""
        return self.num_partitions * self.window

    @property
    def head(self) -> int:
        """Finished frames kept in front of the queue as context: ``window - stride`` (``window // 2`` with
        lookahead, 0 without)."""
        return self.window - self.stride


class QueueNoise:
    """Fresh noise for a FIFO queue, a few frames at a time: ``noise(n)`` -> ``(b, c, n, h, w)``.

    ``noise="independent"``: every frame draws its own standard normal noise. ``noise="decomposed"``:
    VideoFusion's decomposed noise, ``sqrt(noise_ratio) * base + sqrt(1 - noise_ratio) * residual``, with
    one ``base`` (b, c, 1, h, w) drawn here for the whole video, so every frame that ever enters the queue
    shares it (:func:`videofusion.noise.initial_latents` does the same for one clip). A list of generators
    draws video ``i``'s noise from ``generator[i]`` only.

    shape: ``(b, c, h, w)`` of one frame of latents; noise_ratio in [0, 1] (default 0.5).
    """

    def __init__(self, shape: Sequence[int], generator: Generator = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, noise: str = "independent", noise_ratio: float = 0.5):
        if noise not in NOISE_MODES:
            raise ValueError(f"noise: {noise!r} is not one of {list(NOISE_MODES)}")
        if not 0.0 <= noise_ratio <= 1.0:
            raise ValueError(f"noise_ratio: must be in [0, 1], got {noise_ratio}")
        self.batch, self.channels, self.height, self.width = shape
        self.generator, self.device, self.dtype, self.ratio = generator, device, dtype, noise_ratio
        self.base = None
        if noise == "decomposed":
            self.base = randn((self.batch, self.channels, 1, self.height, self.width), generator, device, dtype)

    def __call__(self, num_frames: int = 1) -> torch.Tensor:
        residual = randn((self.batch, self.channels, num_frames, self.height, self.width), self.generator,
                         self.device, self.dtype)  # (b, c, n, h, w)
        if self.base is None:
            return residual
        return math.sqrt(self.ratio) * self.base + math.sqrt(1.0 - self.ratio) * residual

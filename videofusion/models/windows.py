"""Temporal attention in overlapping windows of frames, fused as in FreeNoise (Qiu et al. 2023,
"FreeNoise: Tuning-Free Longer Video Diffusion via Noise Rescheduling", sec. 3.3).

:class:`~videofusion.models.layers.TransformerTemporalModel` uses :func:`fuse_windows` when a window is
set (``unet.set_temporal_window(window, stride)``); the pipeline sets it from its ``long_video``
option (:mod:`videofusion.long_video`). Pure functions of tensors.
"""
from __future__ import annotations

from typing import Callable

import torch


def frame_windows(num_frames: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Half-open frame ranges ``[(start, end), ...]`` of the attention windows: starts 0, stride,
    2*stride, ... while the window fits, plus one window ending at the last frame if the last start
    leaves frames uncovered. One window ``(0, num_frames)`` when ``num_frames <= window``.

    >>> frame_windows(10, 4, 3)
    [(0, 4), (3, 7), (6, 10)]
    >>> frame_windows(11, 4, 3)
    [(0, 4), (3, 7), (6, 10), (7, 11)]
    """
    if num_frames <= window:
        return [(0, num_frames)]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return [(s, s + window) for s in starts]


def window_weights(window: int) -> torch.Tensor:
    """FreeNoise's fusion weights of the frames of one window: ``min(i + 1, window - i)``, i.e.
    ``[1, 2, ..., 2, 1]`` (diffusers' "pyramid"), float32 of shape (window,)."""
    i = torch.arange(window)
    return torch.minimum(i + 1, window - i).float()


def fuse_windows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, window: int,
                 stride: int) -> torch.Tensor:
    """Window-based fusion (FreeNoise, sec. 3.3): ``fn`` on every window of frames of ``x``, the
    outputs averaged per frame with :func:`window_weights`.

    x: (n, num_frames, dim) tokens, frames on dim 1. ``fn`` maps (n, w, dim) -> (n, w, dim) and must
    treat the n rows independently. Returns (n, num_frames, dim) in ``x.dtype`` (accumulated in
    float32). With ``num_frames <= window`` this is ``fn(x)``.
    """
    num_frames = x.shape[1]
    if num_frames <= window:
        return fn(x)
    total = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # (n, f, dim)
    weight_sum = torch.zeros(num_frames, dtype=torch.float32, device=x.device)  # (f,)
    weights = window_weights(window).to(x.device)  # (window,)
    for start, end in frame_windows(num_frames, window, stride):
        total[:, start:end] += fn(x[:, start:end]).float() * weights[None, :, None]
        weight_sum[start:end] += weights
    return (total / weight_sum[None, :, None]).to(x.dtype)

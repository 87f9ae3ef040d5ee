"""Exact chunked evaluation of the UNet3D's layers (frame chunking), for long videos.

The UNet folds frames into the batch: its 2-D layers (ResNets, spatial transformers, down/up
samplers, the in/out convs) treat every frame on its own, so they can run over chunks of
``frames_per_chunk`` rows of the (batch * frames) axis; its temporal layers treat every pixel on its
own, so they can run over chunks of pixels. The working memory inside a layer (GroupNorm and SiLU
outputs, q/k/v, the feed-forward's 8x-wide hidden layer) then stays at one chunk, whatever
``num_frames``; only the layer outputs and the skip connections keep the full (batch * frames) size.

The temporal layers start with a GroupNorm over (channels, frames, height, width), whose statistics
need every frame and pixel: :func:`group_stats` reduces them chunk by chunk (two passes, float32)
and :func:`group_normalize` applies them to one chunk, as ``nn.GroupNorm`` would (float32 math,
output in the input dtype). Results equal the unchunked layers up to float rounding.
"""
from __future__ import annotations

from typing import Callable

import torch


def map_rows(fn: Callable[..., torch.Tensor], rows: int | None, x: torch.Tensor,
             *per_row: torch.Tensor) -> torch.Tensor:
    """``fn(x, *per_row)`` evaluated on chunks of ``rows`` rows (dim 0) of ``x`` and of each tensor in
    ``per_row`` (same rows), written into one output. ``rows=None`` (or ``>= len(x)``) is one call.
    ``fn`` must treat rows independently (a per-frame layer)."""
    n = x.shape[0]
    if rows is None or n <= rows:
        return fn(x, *per_row)
    out = None
    for i in range(0, n, rows):
        y = fn(x[i:i + rows], *(t[i:i + rows] for t in per_row))
        if out is None:
            out = torch.empty((n, *y.shape[1:]), dtype=y.dtype, device=y.device)
            if y.ndim == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
                out = out.contiguous(memory_format=torch.channels_last)
        out[i:i + rows] = y
    return out


def pixels_per_chunk(frames_per_chunk: int | None, pixels: int | None, rows: int, num_pixels: int) -> int | None:
    """Pixels per chunk of a temporal layer on (``rows`` = batch * frames, c, h, w) with ``num_pixels``
    = h * w: ``pixels`` if given, else as many as hold ``frames_per_chunk * num_pixels`` tokens (as a
    spatial chunk does); None (one pass) when chunking is off or one chunk covers every pixel."""
    if pixels is None:
        if frames_per_chunk is None:
            return None
        pixels = max(1, frames_per_chunk * num_pixels // rows)
    return None if pixels >= num_pixels else pixels


def pixel_view(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(b*f, c, h, w) -> (b, f, c, h*w), a view (``x`` must be contiguous or channels-last)."""
    bf, c, h, w = x.shape
    return x.view(bf // num_frames, num_frames, c, h * w)


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself if it is contiguous or channels-last (so :func:`pixel_view` is a view), else a copy."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def group_stats(x: torch.Tensor, groups: int, eps: float, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """GroupNorm statistics of ``x`` (b, f, c, n) over (c/groups, f, n) per video and group, reading
    ``pixels`` of the n pixels at a time: ``(mean, rstd)``, each (b, groups) float32, with
    ``rstd = 1 / sqrt(var + eps)`` (biased variance, as ``nn.GroupNorm``). Two passes (mean, then
    the squared deviations), so no cancellation."""
    b, f, c, n = x.shape
    count = f * (c // groups) * n

    def grouped(p):
        return x[..., p:p + pixels].float().reshape(b, f, groups, c // groups, -1)  # (b, f, g, c/g, P)

    total = x.new_zeros((b, groups), dtype=torch.float32)
    for p in range(0, n, pixels):
        total += grouped(p).sum(dim=(1, 3, 4))
    mean = total / count  # (b, g)
    squares = torch.zeros_like(total)
    for p in range(0, n, pixels):
        squares += (grouped(p) - mean[:, None, :, None, None]).square().sum(dim=(1, 3, 4))
    return mean, torch.rsqrt(squares / count + eps)


def group_normalize(chunk: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``nn.GroupNorm`` of a pixel chunk (b, f, c, P) with statistics from :func:`group_stats` and the
    affine ``weight``, ``bias`` (c,) (None: no affine). Float32 math, output in ``chunk.dtype``."""
    b, f, c, p = chunk.shape
    groups = mean.shape[1]
    y = chunk.float().reshape(b, f, groups, c // groups, p)  # (b, f, g, c/g, P)
    y = ((y - mean[:, None, :, None, None]) * rstd[:, None, :, None, None]).reshape(b, f, c, p)
    if weight is not None:
        y = y * weight.float()[:, None] + bias.float()[:, None]
    return y.to(chunk.dtype)

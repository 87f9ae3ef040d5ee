"""Decoding long videos a chunk of frames at a time: each decoded chunk leaves the accelerator at once,
and can go straight into the video encoder, so no device ever holds every decoded frame.

The pipeline uses this when VAE slicing is on (``pipe.enable_vae_slicing(frames_per_chunk)``) or a call
writes its videos itself (``pipe(..., output_path="out.mp4")``). Exact: the same decode, in pieces.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Callable, Iterable, Iterator

import torch

from .video import VideoWriter


def decoded_chunks(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor,
                   frames_per_chunk: int) -> Iterator[torch.Tensor]:
    """Yield ``decode(latents[:, :, f:f + frames_per_chunk]).cpu()`` for consecutive chunks of frames.

    latents: (b, c, num_frames, h, w); ``decode`` maps (b, c, n, h, w) latents to a (b, 3, n, H, W)
    video (the pipeline's ``decode_latents``). Each chunk is moved to the CPU before the next is decoded.
    """
    for start in range(0, latents.shape[2], frames_per_chunk):
        yield decode(latents[:, :, start:start + frames_per_chunk]).cpu()


def video_writers(output_path: str | os.PathLike | list | tuple | None, num_videos: int,
                  fps: float) -> list[VideoWriter] | None:
    """One :class:`~videofusion.io.video.VideoWriter` per video (no file is touched yet), checking the
    paths and fps before any model runs. ``output_path``: None (no writers), a path (one video), or a
    list with one path per video."""
    if output_path is None:
        return None
    paths = list(output_path) if isinstance(output_path, (list, tuple)) else [output_path]
    if len(paths) != num_videos:
        raise ValueError(f"output_path: {len(paths)} path(s) given for {num_videos} video(s); pass one path "
                         "per video (a list when a call makes several)")
    writers = []
    for path in paths:
        try:
            writers.append(VideoWriter(path, fps))
        except (TypeError, ValueError, FileNotFoundError, IsADirectoryError) as e:
            raise type(e)(f"output_path / output_fps: {e}") from None
    return writers


def write_videos(chunks: Iterable[torch.Tensor], writers: list[VideoWriter]) -> list[str]:
    """Encode frame chunks ``(num_videos, n, 3, H, W)`` (floats in [0, 1], the pipeline's ``"pt"``
    layout) into the writers' files chunk by chunk; each file appears atomically when all is written.
    Returns the paths."""
    with ExitStack() as stack:
        for writer in writers:
            stack.enter_context(writer)
        for chunk in chunks:
            for writer, video in zip(writers, chunk):
                writer.write(video.permute(0, 2, 3, 1).float().numpy())  # (n, H, W, 3)
    return [writer.path for writer in writers]

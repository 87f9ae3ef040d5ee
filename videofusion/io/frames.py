"""Videos given to a pipeline as input (video-to-video): whatever a user holds, as one float tensor.

Accepted, as diffusers' ``VideoProcessor.preprocess_video`` accepts them, plus files and uint8:

- what a text-to-video call returns, as is: ``.frames`` of ``output_type="np"`` (a (batch, frames, height,
  width, 3) array in [0, 1]), ``"pt"`` (a (batch, frames, 3, height, width) tensor) or ``"pil"``;
- one video: a list of frames (PIL images, (height, width, 3) arrays or (3, height, width) tensors), a
  (frames, height, width, 3) array or a (frames, 3, height, width) tensor;
- several videos: a list of such videos, a 5-D array or tensor;
- a path to a video file (mp4, gif, mov, mkv, webm).

Values: floats in [0, 1] (a float tensor with negative values is taken as already in [-1, 1], as diffusers
does), or uint8 in [0, 255] (diffusers reads uint8 arrays as if in [0, 1]: a deliberate difference). A
tensor with 4 channels is taken as VAE latents and passed through, as in diffusers.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from ..errors import SettingError

RESIZE_FILTER = "bicubic with antialiasing"  # how height/width resize the frames (torch.nn.functional.interpolate)


def _frame(x: Any) -> torch.Tensor:
    """One frame -> float (3, h, w) in [0, 1] (or [-1, 1] / latents, left as they are)."""
    if isinstance(x, PIL.Image.Image):
        return torch.from_numpy(np.array(x.convert("RGB"))).permute(2, 0, 1).float() / 255.0
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)  # (h, w, c) -> (c, h, w)
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        raise SettingError("video", type(x).__name__, "frames as PIL images, (height, width, 3) arrays or "
                                                      "(3, height, width) tensors")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def _one_video(video: Any) -> torch.Tensor:
    """One video -> float (frames, c, h, w)."""
    if isinstance(video, (str, os.PathLike)):
        from .video import load_video
        video = load_video(video)
    if isinstance(video, np.ndarray) and video.ndim == 4:
        video = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2)  # (f, h, w, c) -> (f, c, h, w)
    if isinstance(video, torch.Tensor) and video.ndim == 4:
        return video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    if isinstance(video, (list, tuple)):
        if not video:
            raise SettingError("video", video, "at least one frame")
        frames = [_frame(f) for f in video]
        sizes = sorted({tuple(f.shape) for f in frames})
        if len(sizes) > 1:
            raise SettingError("video", f"frames of sizes {sizes}", "frames all of one size")
        return torch.stack(frames)
    raise SettingError("video", type(video).__name__, "a video: frames, a 4-D array or tensor, or a file path")


def _videos(video: Any) -> list[torch.Tensor]:
    """The input as a list of (frames, c, h, w) videos."""
    if isinstance(video, (np.ndarray, torch.Tensor)) and video.ndim == 5:
        return [_one_video(v) for v in video]
    if isinstance(video, (list, tuple)) and video and (
            isinstance(video[0], (list, tuple, str, os.PathLike))
            or isinstance(video[0], (np.ndarray, torch.Tensor)) and video[0].ndim == 4):
        return [_one_video(v) for v in video]
    return [_one_video(video)]


def video_to_tensor(video: Any, height: int | None = None, width: int | None = None) -> torch.Tensor:
    """``video`` (see the module docstring) as a float32 tensor (videos, c, frames, height, width): pixels in
    [-1, 1] (c = 3), or latents as given (c = 4). ``height``/``width`` resize the frames (pixels; both or
    neither; :data:`RESIZE_FILTER`). SettingError naming ``video`` for an empty video, frames of different
    sizes or videos of different shapes."""
    if video is None:
        raise SettingError("video", None, "a video to start from")
    if (height is None) != (width is None):
        raise SettingError("height" if height is None else "width", None, "given with the other one, or neither")
    videos = [_pixels(v, height, width) for v in _videos(video)]
    shapes = sorted({tuple(v.shape) for v in videos})
    if len(shapes) > 1:
        raise SettingError("video", f"videos of shapes {shapes}", "videos all of one shape (frames, size)")
    return torch.stack(videos).permute(0, 2, 1, 3, 4).contiguous()  # (b, f, c, h, w) -> (b, c, f, h, w)


def _pixels(video: torch.Tensor, height: int | None, width: int | None) -> torch.Tensor:
    """One (frames, c, h, w) video resized and in [-1, 1] (latents: as they are)."""
    f, c, h, w = video.shape
    if f == 0 or h == 0 or w == 0:
        raise SettingError("video", f"a video of shape {tuple(video.shape)}", "at least one frame of pixels")
    if c == 4:
        return video
    if c != 3:
        raise SettingError("video", f"{c} channels", "RGB frames (3 channels) or latents (4)")
    low = 0.0 if video.min() >= 0 else -1.0  # [0, 1] pixels, or already [-1, 1] (as diffusers reads them)
    if height is not None and (height, width) != (h, w):
        video = F.interpolate(video, size=(height, width), mode="bicubic", antialias=True,
                              align_corners=False).clamp(low, 1)  # bicubic overshoots a little at edges
    return video * 2 - 1 if low == 0 else video

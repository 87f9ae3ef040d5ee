"""Video files: H.264 MP4 through PyAV, animated GIF through PIL, and reading both back.

Accepted frame inputs (`to_uint8_frames`), i.e. whatever a pipeline returns, as-is:

- numpy arrays, channels last: `(num_frames, height, width, 3)`, or a batch of one
  `(1, num_frames, height, width, 3)` (`output_type="np"`);
- torch tensors of the same shapes, or channels first `(num_frames, 3, height, width)` /
  `(1, num_frames, 3, height, width)` (`output_type="pt"`); a tensor whose layout is ambiguous
  (3 both in axis -3 and axis -1) is rejected: pass a channels-last numpy array instead;
- a list of frames: PIL images, numpy arrays `(height, width, 3)` or torch tensors `(height, width, 3)`
  / `(3, height, width)`; or a batch of one such list (`output_type="pil"` gives `[[img, ...]]`).

Values: uint8 in [0, 255], or floats in [0, 1] (clipped to [0, 1], then `(x * 255).round()`).
Grayscale (one channel, 2-D frames, PIL mode "L") is replicated to RGB. RGBA / alpha is rejected
(drop or composite the alpha first). A batch of more than one video is rejected: pass `frames[i]`.

All outputs are written atomically (:class:`videofusion.io.saving.PartialFile`): into a temporary file beside
the destination, flushed, then renamed onto it; on any error the temporary file is removed and nothing is left.
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import tempfile
import warnings
from fractions import Fraction
from typing import Any, Callable

import numpy as np
import PIL.Image
import PIL.ImageSequence
import torch

from ..errors import SettingError
from .saving import PartialFile

VIDEO_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # suffix -> PyAV format
DEFAULT_CRF = 18  # libx264 constant rate factor: 0 lossless .. 51 worst; 18 is near visually lossless
DEFAULT_FPS = 8  # frames per second of written videos: ModelScope's training rate (diffusers writes 10)
MAX_GIF_FPS = 50  # GIF delays are in 1/100 s and browsers play delays under 2/100 s at 1/10 s


def _av():
    """PyAV, imported on first use: ``import videofusion`` (and generating frames) works without it."""
    try:
        import av
    except ImportError as error:
        raise ImportError("writing or reading MP4/MOV/MKV needs PyAV: pip install av (GIF works without it)") from error
    return av


_LAYOUTS = "(num_frames, height, width, 3) arrays/tensors or (num_frames, 3, height, width) torch tensors"


# ----------------------------------------------------------------------------- input normalisation


def _is_video_like(x: Any) -> bool:
    """True for one whole video (a list of frames or a 4-D array/tensor), i.e. an element of a batch."""
    return isinstance(x, (list, tuple)) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 4)


def _tensor_to_numpy(t: torch.Tensor, name: str) -> np.ndarray:
    """A frame `(h, w, c)`/`(c, h, w)` or video `(f, h, w, c)`/`(f, c, h, w)` tensor -> channels-last numpy."""
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # numpy has no bfloat16
    if t.ndim >= 3:
        first, last = t.shape[-3] in (1, 3, 4), t.shape[-1] in (1, 3, 4)
        if first and last:
            raise ValueError(
                f"{name}: tensor of shape {tuple(t.shape)} is ambiguous (channels first or last?); "
                "pass a channels-last numpy array (num_frames, height, width, 3) instead"
            )
        if first:
            t = t.movedim(-3, -1)  # (..., c, h, w) -> (..., h, w, c)
    return t.numpy()


def _frame_to_array(frame: Any, index: int, name: str) -> np.ndarray:
    """One list element (PIL image, array or tensor) -> `(height, width, channels)` array."""
    where = f"{name}[{index}]"
    if isinstance(frame, PIL.Image.Image):
        if {"A", "a"} & set(frame.getbands()):
            raise ValueError(f"{where}: PIL image mode {frame.mode!r} has alpha; convert it first: .convert('RGB')")
        return np.asarray(frame.convert("RGB"))
    if isinstance(frame, torch.Tensor):
        frame = _tensor_to_numpy(frame, where)
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{where}: expected a PIL image, numpy array or torch tensor, got {type(frame).__name__}")
    if frame.ndim == 2:
        return frame[:, :, None]  # grayscale (h, w) -> (h, w, 1)
    if frame.ndim != 3:
        raise ValueError(f"{where}: expected a frame (height, width, 3) or (height, width), got shape {frame.shape}")
    return frame


def to_uint8_frames(frames: Any, name: str = "video_frames") -> np.ndarray:
    """Normalise any accepted video input (see the module docstring) to RGB uint8 frames.

    Args:
        frames: the video; a pipeline's `.frames` can be passed as-is.
        name: the argument name used in error messages.

    Returns:
        A C-contiguous uint8 array `(num_frames, height, width, 3)`.
    """
    # Unwrap a batch of one; reject bigger batches.
    if isinstance(frames, (list, tuple)) and len(frames) > 0 and _is_video_like(frames[0]):
        if len(frames) != 1:
            raise ValueError(f"{name} is a batch of {len(frames)} videos; export one at a time: pass {name}[i]")
        frames = frames[0]
    elif isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim == 5:
        if frames.shape[0] != 1:
            raise ValueError(f"{name} is a batch of {frames.shape[0]} videos; export one at a time: pass {name}[i]")
        frames = frames[0]

    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError(f"{name} is empty; a video needs at least one frame")
        arrays = [_frame_to_array(frame, i, name) for i, frame in enumerate(frames)]
        for i, a in enumerate(arrays):
            if a.shape != arrays[0].shape or a.dtype != arrays[0].dtype:
                raise ValueError(
                    f"{name}[{i}] has shape {a.shape} and dtype {a.dtype}, but {name}[0] has shape "
                    f"{arrays[0].shape} and dtype {arrays[0].dtype}; all frames must match"
                )
        video = np.stack(arrays)  # (f, h, w, c)
    elif isinstance(frames, (np.ndarray, torch.Tensor)):
        if frames.ndim != 4:
            raise ValueError(
                f"{name} has shape {tuple(frames.shape)}; expected {_LAYOUTS} "
                "(for grayscale add a channel axis: frames[..., None])"
            )
        video = _tensor_to_numpy(frames, name) if isinstance(frames, torch.Tensor) else frames
    else:
        raise TypeError(
            f"{name}: expected a numpy array, torch tensor or list of frames (PIL images, arrays, tensors), "
            f"got {type(frames).__name__}"
        )

    if video.shape[0] == 0:
        raise ValueError(f"{name} is empty; a video needs at least one frame")
    channels = video.shape[-1]
    if channels == 4:
        raise ValueError(f"{name} has 4 channels (RGBA); drop or composite the alpha first, e.g. frames[..., :3]")
    if channels not in (1, 3):
        raise ValueError(f"{name} has shape {video.shape} with {channels} channels; expected {_LAYOUTS}")
    if video.shape[1] == 0 or video.shape[2] == 0:
        raise ValueError(f"{name} has empty frames of shape {video.shape[1:]}")

    if video.dtype == np.uint8:
        pass
    elif np.issubdtype(video.dtype, np.floating):
        if not np.isfinite(video).all():
            raise ValueError(f"{name} contains NaN or inf (in fp16 pipelines often a VAE overflow; decode in fp32)")
        if video.max() > 2.0:
            warnings.warn(
                f"{name} is float with values up to {float(video.max()):.1f}; floats are read as [0, 1] and "
                "clipped. Divide by 255 (or convert to uint8) if they are [0, 255] pixels.",
                stacklevel=3,
            )
        video = (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)
    else:
        raise TypeError(f"{name} has dtype {video.dtype}; expected uint8 in [0, 255] or float in [0, 1]")

    if channels == 1:
        video = np.repeat(video, 3, axis=-1)  # grayscale -> (f, h, w, 3)
    return np.ascontiguousarray(video)


def clip_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """RGB frames ``(f, h, w, 3)`` uint8 -> the training range: float32 ``(3, f, h, w)`` in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


# ----------------------------------------------------------------------------- argument checks, atomic files


def _check_fps(fps: Any, name: str = "fps") -> Fraction:
    """fps (int, float or Fraction > 0) -> an exact Fraction (floats to the nearest p/q with q <= 10**6)."""
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real):
        raise TypeError(f"{name} must be a positive number (int, float or Fraction), got {type(fps).__name__}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{name} must be a positive finite number of frames per second, got {fps}")
    rate = Fraction(fps).limit_denominator(10**6)
    if rate <= 0:
        raise ValueError(f"{name}={fps} is too small; use at least 1e-6 frames per second")
    return rate


def _check_output_path(path: Any, name: str, suffixes: tuple[str, ...]) -> str:
    """Validate a destination path: type, suffix, existing parent folder, not a folder itself."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in suffixes:
        hint = " (use export_to_gif for GIFs)" if suffix == ".gif" else ""
        raise ValueError(f"{name}={path!r} must end with one of {', '.join(suffixes)}{hint}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"{name}={path!r}: the folder {parent!r} does not exist; create it first")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{name}={path!r} is a folder; give a file path")
    return path


def _new_temp_output(suffix: str) -> str:
    """A fresh path in the system temp folder (not created; the atomic write creates it)."""
    return os.path.join(tempfile.gettempdir(), f"videofusion-{secrets.token_hex(8)}{suffix}")


def check_output(path: str | os.PathLike, fps: Any) -> str:
    """Check where a video will be written, before any work: ``path`` ends in .mp4, .m4v, .mov, .mkv or
    .gif, its folder exists and is writable, it is not a folder; ``fps`` is a number > 0, at most 50 for
    a GIF. SettingError naming ``output`` or ``fps`` otherwise. Returns the path as a str."""
    suffixes = (*VIDEO_CONTAINERS, ".gif")
    if not isinstance(path, (str, os.PathLike)):
        raise SettingError("output", path, "a file path")
    path = os.fspath(path)
    if os.path.splitext(path)[1].lower() not in suffixes:
        raise SettingError("output", path, f"a file name ending in {', '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SettingError("output", path, f"in an existing folder ({folder} does not exist)")
    if not os.access(folder, os.W_OK):
        raise SettingError("output", path, f"in a folder you can write to ({folder} is not writable)")
    if os.path.isdir(path):
        raise SettingError("output", path, "a file name, not a folder")
    top = MAX_GIF_FPS if path.lower().endswith(".gif") else math.inf
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps <= top:
        raise SettingError("fps", fps, "a number > 0" + (f", at most {MAX_GIF_FPS} for a GIF" if top < math.inf else ""))
    return path


# ----------------------------------------------------------------------------- MP4 writing


class VideoWriter:
    """Stream RGB frames into an H.264 (libx264) yuv420p video, atomically.

    BT.709 limited-range YUV, tagged as such; MP4/MOV get `+faststart` so browsers play while loading.
    Frames are encoded chunk by chunk as they are written (memory stays at one chunk). The file appears
    at `path` only when the `with` block exits cleanly; on an exception it is discarded.

    Odd frame sizes are padded to even (yuv420p needs even sizes) by replicating the last row/column,
    so the encoded size is `(height + height % 2, width + width % 2)`.

        with VideoWriter("out.mp4", fps=8) as writer:
            for chunk in chunks:            # any input `to_uint8_frames` accepts
                writer.write(chunk)

    Args:
        path: destination ending in .mp4, .m4v, .mov or .mkv; its folder must exist.
        fps: frames per second, > 0 (int, float or Fraction; 29.97 is stored as 2997/100). Default 8.
        width, height: frame size in pixels before padding; optional, else taken from the first chunk.
            Every chunk must have the same size.
        crf: libx264 constant rate factor in [0, 51], lower is better; default 18. crf=0 is lossless
            but uses the High 4:4:4 profile, which browsers do not play.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | Fraction = DEFAULT_FPS,
        *,
        width: int | None = None,
        height: int | None = None,
        crf: float = DEFAULT_CRF,
    ) -> None:
        self.path = _check_output_path(path, "path", tuple(VIDEO_CONTAINERS))
        self.fps = _check_fps(fps)
        for arg, value in (("width", width), ("height", height)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{arg} must be a positive int or None, got {value!r}")
        if isinstance(crf, bool) or not isinstance(crf, numbers.Real) or not 0 <= crf <= 51:
            raise ValueError(f"crf must be a number in [0, 51] (lower is better quality), got {crf!r}")
        self.width, self.height, self.crf = width, height, crf
        self.num_frames = 0
        self._file: PartialFile | None = None
        self._container = None
        self._stream = None

    def __enter__(self) -> VideoWriter:
        if self._file is not None or self.num_frames:
            raise RuntimeError("a VideoWriter can be entered only once")
        self._file = PartialFile(self.path)
        try:
            fmt = VIDEO_CONTAINERS[os.path.splitext(self.path)[1].lower()]
            options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
            self._container = _av().open(str(self._file.tmp), mode="w", format=fmt, options=options)
        except BaseException:
            self._file.discard()
            raise
        return self

    def _add_stream(self, width: int, height: int) -> None:
        stream = self._container.add_stream("libx264", rate=self.fps)
        stream.width, stream.height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.fps  # pts counts frames
        stream.options = {"crf": str(self.crf)}
        cc = stream.codec_context
        cc.colorspace = cc.color_primaries = cc.color_trc = 1  # AVCOL_*_BT709
        cc.color_range = 1  # AVCOL_RANGE_MPEG (limited, 16-235)
        self._stream = stream

    def write(self, frames: Any) -> None:
        """Encode a chunk of frames (any input `to_uint8_frames` accepts) at the end of the video."""
        if self._container is None:
            raise RuntimeError("use VideoWriter as a context manager: `with VideoWriter(path) as w: w.write(...)`")
        video = to_uint8_frames(frames, "frames")  # (f, h, w, 3) uint8
        height, width = video.shape[1:3]
        if (self.height or height, self.width or width) != (height, width):
            raise ValueError(f"frames are {height}x{width} (height x width), expected {self.height}x{self.width}")
        self.height, self.width = height, width
        if self._stream is None:
            self._add_stream(width, height)
        video = np.pad(video, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")  # even h, w
        av = _av()
        for image in video:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame = frame.reformat(format="yuv420p", dst_colorspace="itu709", dst_color_range=1)
            frame.pts = self.num_frames
            self._container.mux(self._stream.encode(frame))
            self.num_frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        """Commit the file on a clean exit; discard it if the block raised (the exception propagates)."""
        if self._container is None:
            return
        if exc_type is not None:
            self._abort()
            return
        try:
            if self.num_frames == 0:
                raise ValueError(f"no frames were written to {self.path!r}; nothing was saved")
            self._container.mux(self._stream.encode())  # flush delayed frames
            self._container.close()
            self._container = None
            self._file.commit()
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the file is being thrown away; its trailer does not matter
                pass
            self._container = None
        self._file.discard()


def export_to_video(
    video_frames: Any,
    output_video_path: str | os.PathLike | None = None,
    fps: float | Fraction = DEFAULT_FPS,
    *,
    crf: float = DEFAULT_CRF,
) -> str:
    """Write a video as H.264 yuv420p MP4 (plays in browsers), atomically, via `VideoWriter`.

    Args:
        video_frames: a pipeline's `.frames` as-is, or any input listed in the module docstring,
            e.g. floats in [0, 1] of shape `(num_frames, height, width, 3)` or `(1, num_frames, height, width, 3)`.
        output_video_path: destination ending in .mp4, .m4v, .mov or .mkv, in an existing folder;
            `None` (default) -> a new `.mp4` path in the system temp folder.
        fps: frames per second, > 0; default 8 (ModelScope's training rate; diffusers defaults to 10).
        crf: libx264 quality, 0..51, lower is better; default 18.

    Returns:
        The path written, as a str. Odd sizes are padded to even by edge replication.
    """
    path = _new_temp_output(".mp4") if output_video_path is None else output_video_path
    writer = VideoWriter(path, fps, crf=crf)  # checks arguments; touches no file yet
    frames = to_uint8_frames(video_frames, "video_frames")
    with writer:
        writer.write(frames)
    return writer.path


# ----------------------------------------------------------------------------- GIF writing


def gif_durations_ms(num_frames: int, fps: Fraction) -> list[int]:
    """Per-frame GIF delays in ms, multiples of 10 (GIF stores 1/100 s) whose running sum tracks
    `i * 1000 / fps` to the nearest 10 ms, so long GIFs keep the right total length (8 fps -> 130, 120, ...)."""
    ends = [math.floor((i + 1) * 100 / fps + Fraction(1, 2)) for i in range(num_frames)]  # centiseconds, half up
    return [10 * (end - start) for start, end in zip([0] + ends[:-1], ends)]


def export_to_gif(
    frames: Any,
    output_gif_path: str | os.PathLike | None = None,
    fps: float | Fraction = DEFAULT_FPS,
) -> str:
    """Write an infinitely looping animated GIF through PIL, atomically.

    Args:
        frames: any input listed in the module docstring (same as `export_to_video`).
        output_gif_path: destination ending in .gif, in an existing folder; `None` (default) -> a new
            `.gif` path in the system temp folder.
        fps: frames per second, in (0, 50]; each frame lasts 1000/fps ms, rounded to GIF's 10 ms steps
            with the rounding error carried over (see `gif_durations_ms`). Default 8 (diffusers: 10).

    Returns:
        The path written, as a str. Note: PIL merges identical consecutive frames into one longer frame.
    """
    path = _check_output_path(
        _new_temp_output(".gif") if output_gif_path is None else output_gif_path, "output_gif_path", (".gif",)
    )
    rate = _check_fps(fps)
    if rate > MAX_GIF_FPS:
        raise ValueError(f"fps must be at most {MAX_GIF_FPS} for GIFs (browsers slow faster GIFs down), got {fps}")
    video = to_uint8_frames(frames, "frames")  # (f, h, w, 3)
    images = [PIL.Image.fromarray(image) for image in video]
    with PartialFile(path) as tmp:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=gif_durations_ms(len(images), rate),
            loop=0,
            optimize=False,
        )
    return path


# ----------------------------------------------------------------------------- reading


def load_video(
    video: str | os.PathLike,
    convert_method: Callable[[list[PIL.Image.Image]], list[PIL.Image.Image]] | None = None,
    return_fps: bool = False,
) -> list[PIL.Image.Image] | tuple[list[PIL.Image.Image], float]:
    """Read a local video file into RGB PIL images (as `diffusers.utils.load_video`, local files only).

    GIFs (detected by their header) are read with PIL, anything else (mp4, mov, mkv, webm, ...) with PyAV.
    URLs are not supported: download first (e.g. `huggingface_hub.hf_hub_download`).

    Args:
        video: path to the file.
        convert_method: optional function applied to the list of RGB frames.
        return_fps: also return the frame rate (GIF: frames per second of the mean delay; diffusers
            uses the first frame's delay).

    Returns:
        The frames, or `(frames, fps)` if `return_fps`.
    """
    if not isinstance(video, (str, os.PathLike)):
        raise TypeError(f"video must be a path (str or os.PathLike), got {type(video).__name__}")
    path = os.fspath(video)
    if path.startswith(("http://", "https://")):
        raise ValueError(f"video={path!r}: URLs are not supported; download the file first and pass its path")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video={path!r} is not a file")
    with open(path, "rb") as f:
        is_gif = f.read(6) in (b"GIF87a", b"GIF89a")

    fps: float | None = None
    if is_gif:
        images, durations = [], []
        with PIL.Image.open(path) as gif:
            for frame in PIL.ImageSequence.Iterator(gif):
                images.append(frame.convert("RGB"))
                durations.append(frame.info.get("duration") or 0)
        fps = 1000 * len(durations) / sum(durations) if all(durations) else None
    else:
        av = _av()
        try:
            container = av.open(path)
        except av.FFmpegError as error:
            raise ValueError(f"video={path!r} is not a readable video file: {error}") from error
        with container:
            if not container.streams.video:
                raise ValueError(f"video={path!r} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            images = [frame.to_image() for frame in container.decode(stream)]

    if convert_method is not None:
        images = convert_method(images)
    if return_fps:
        if fps is None:
            raise ValueError(f"could not read a frame rate from {path!r}, so return_fps=True cannot be honoured")
        return images, fps
    return images

"""Training data: videos with captions, as items ``{"video": (3, num_frames, height, width) in [-1, 1],
"caption": str}`` (the layout of :class:`videofusion.demo.shapes.ShapesDataset`).

Two on-disk layouts:

* a folder of ``NAME.mp4`` / ``NAME.gif`` files, each with a ``NAME.txt`` caption beside it;
* a JSONL manifest, one ``{"video": "path", "caption": "text"}`` per line (paths relative to the
  manifest's folder).

Clips longer than ``num_frames`` are cut to their first ``num_frames`` frames (with ``frame_stride``
skipping); shorter ones are an error naming the file. Frames are resized to ``height x width`` with
a centre crop that keeps the aspect ratio.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..io.video import clip_to_tensor

VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".mkv", ".webm")


def _items_from_folder(folder: Path) -> list[tuple[Path, str]]:
    items = []
    for video in sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES):
        text = video.with_suffix(".txt")
        if not text.is_file():
            raise ValueError(f"data: {video} has no caption file {text.name} beside it")
        items.append((video, text.read_text(encoding="utf-8").strip()))
    if not items:
        raise ValueError(f"data: {folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}) with .txt captions")
    return items


def _items_from_manifest(manifest: Path) -> list[tuple[Path, str]]:
    items = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            video, text = record["video"], record["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"data: {manifest} line {number}: expected {{\"video\": ..., \"caption\": ...}} ({e})")
        path = (manifest.parent / video) if not os.path.isabs(video) else Path(video)
        if not path.is_file():
            raise ValueError(f"data: {manifest} line {number}: video {path} does not exist")
        items.append((path, str(text)))
    if not items:
        raise ValueError(f"data: {manifest} has no entries")
    return items


def resize_clip(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop to the target aspect ratio, then resize: (f, H, W, 3) uint8 -> (f, height, width, 3)."""
    from PIL import Image
    f, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    crop_h, crop_w = round(height / scale), round(width / scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    out = np.empty((f, height, width, 3), np.uint8)
    for i in range(f):
        image = Image.fromarray(frames[i, top:top + crop_h, left:left + crop_w])
        out[i] = np.asarray(image.resize((width, height), Image.BICUBIC))
    return out


class VideoCaptionDataset(torch.utils.data.Dataset):
    """Videos with captions from a folder or a JSONL manifest (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, num_frames: int = 16, height: int = 256, width: int = 256,
                 frame_stride: int = 1):
        path = Path(path)
        if path.is_dir():
            self.items = _items_from_folder(path)
        elif path.is_file() and path.suffix == ".jsonl":
            self.items = _items_from_manifest(path)
        else:
            raise ValueError(f"data: {path} is neither a folder of videos nor a .jsonl manifest")
        self.num_frames, self.height, self.width, self.frame_stride = num_frames, height, width, frame_stride

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        from ..io.video import load_video
        path, text = self.items[index]
        frames = np.stack([np.asarray(im.convert("RGB")) for im in load_video(str(path))])
        frames = frames[:: self.frame_stride][: self.num_frames]
        if len(frames) < self.num_frames:
            raise ValueError(f"data: {path} has {len(frames)} frames at stride {self.frame_stride}, "
                             f"fewer than num_frames={self.num_frames}")
        frames = resize_clip(frames, self.height, self.width)
        return {"video": clip_to_tensor(frames), "caption": text}


def open_dataset(spec: str | dict, num_frames: int, height: int, width: int) -> torch.utils.data.Dataset:
    """A dataset from a config value: a path (folder or .jsonl), or ``{"shapes": N, "seed": S}`` (optional
    ``"start_spread"``, ``"cross_spread"``, ``"trail"``, ``"detailed_captions"``, and ``"extra_colours"``, a list of
    :data:`~videofusion.demo.shapes.EXTRA_COLOURS` names painted on ``"extra_share"`` of the clips, default 0.5) for
    N synthetic moving-shape clips (:class:`~videofusion.demo.shapes.ShapesDataset`)."""
    if isinstance(spec, dict):
        if "shapes" not in spec:
            raise ValueError(f"data: a dict must be {{\"shapes\": N, \"seed\": S}}, got {spec}")
        from ..demo.shapes import ShapesDataset
        accepted = ("shapes", "seed", "start_spread", "cross_spread", "trail", "detailed_captions", "extra_colours",
                    "extra_share")
        unknown = sorted(set(spec) - set(accepted))
        if unknown:
            raise ValueError(f"data: unknown keys {unknown}; accepted: {', '.join(accepted)}")
        from ..demo.shapes import EXTRA_COLOURS
        extra = spec.get("extra_colours", [])
        if not (isinstance(extra, list) and all(name in EXTRA_COLOURS for name in extra)):
            raise ValueError(f"data: extra_colours must be a list of {sorted(EXTRA_COLOURS)}, got {extra!r}")
        if "extra_share" in spec and not extra:
            raise ValueError("data: extra_share needs extra_colours")
        return ShapesDataset(int(spec["shapes"]), seed=int(spec.get("seed", 0)), num_frames=num_frames,
                             height=height, width=width, split="train",
                             start_spread=float(spec.get("start_spread", 1.0)), trail=int(spec.get("trail", 0)),
                             cross_spread=float(spec.get("cross_spread", 1.0)),
                             detailed_captions=float(spec.get("detailed_captions", 0.0)),
                             extra_colours=extra, extra_share=float(spec.get("extra_share", 0.5)))
    return VideoCaptionDataset(spec, num_frames=num_frames, height=height, width=width)


def captions_of(dataset) -> list[str]:
    """Every item's caption, without decoding or rendering any video."""
    if isinstance(dataset, VideoCaptionDataset):
        return [text for _, text in dataset.items]
    from ..demo.shapes import ShapesDataset
    if isinstance(dataset, ShapesDataset):
        return [dataset.caption(i) for i in range(len(dataset))]
    return [dataset[i]["caption"] for i in range(len(dataset))]

"""The prompts file of `videofusion batch`: JSONL lines -> checked :class:`Item` s, bad lines with their numbers.

Each line is a JSON object ``{"prompt": ..., "id": ..., "seed": ..., "video": ..., "lora": ..., <settings>}``
(see :data:`ITEM_KEYS`); the settings are :class:`~videofusion.settings.GenerationSettings` fields
(:data:`ITEM_SETTINGS`), checked by it as every front end checks them. An item with a ``video`` (a file path,
relative to the prompts file's folder) is video-to-video: the file's frames, re-generated at ``strength``.
``lora``: a LoRA adapter ``"PATH[:SCALE]"`` (a file or folder relative to the prompts file's folder, or a Hub
id), or a list of them; the worker loads each once and uses the item's for the item alone.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any

from ..settings import DEFAULTS, VIDEO_TO_VIDEO_DEFAULTS, GenerationSettings, check_prompt

# The settings an item may set (GenerationSettings fields, JSON values) and their defaults.
ITEM_SETTINGS = ("negative_prompt", "num_frames", "num_inference_steps", "guidance_scale", "height", "width",
                 "noise", "noise_ratio", "strength")
PIPELINE_DEFAULTS: dict[str, Any] = {k: getattr(DEFAULTS, k) for k in ITEM_SETTINGS}
VIDEO_TO_VIDEO_PIPELINE_DEFAULTS: dict[str, Any] = {k: getattr(VIDEO_TO_VIDEO_DEFAULTS, k) for k in ITEM_SETTINGS}
ITEM_KEYS = ("prompt", "id", "seed", "video", "lora", *ITEM_SETTINGS)
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
# what a video-to-video call takes of an item's settings (the frames, size and noise come from the video)
VIDEO_TO_VIDEO_SETTINGS = ("negative_prompt", "num_inference_steps", "guidance_scale", "strength", "height", "width")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Item:
    """One video to make: ``settings`` are the resolved pipeline keyword arguments."""

    line: int
    id: str
    prompt: str
    seed: int
    settings: dict[str, Any]
    video: str | None = None  # an absolute file path: video-to-video
    lora: tuple[tuple[str, float], ...] = ()  # (absolute path or Hub id, scale) per adapter


@dataclass(frozen=True)
class Defaults:
    """The settings items start from: one dict for text-to-video items, one for items with a video."""

    text_to_video: dict[str, Any]
    video_to_video: dict[str, Any]


def derive_seed(item_id: str) -> int:
    """A stable seed in [0, 2**31) from an item id (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % 2**31


def line_id(line: int) -> str:
    """The id of an item whose line sets none: ``line-000007`` for line 7."""
    return f"line-{line:06d}"


def check_settings(settings: dict[str, Any]) -> GenerationSettings:
    """The item settings in ``settings`` (a subset of :data:`ITEM_SETTINGS`) checked by
    :class:`GenerationSettings`: SettingError naming the key and the value otherwise."""
    return GenerationSettings.from_dict(settings, accepted=ITEM_SETTINGS)


def parse_item(obj: Any, line: int, defaults: Defaults, geometry: tuple[int, int] | None = None,
               folder: str | os.PathLike = ".") -> Item:
    """One decoded JSONL line -> an :class:`Item` with resolved settings; ValueError saying what is wrong.
    ``geometry``: the model's ``(native_size, vae_scale_factor)``, to check the item's frame size (when
    the model's configs can be read here); ``folder``: where a relative ``video`` path is."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object such as {{\"prompt\": \"...\"}}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(ITEM_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; accepted: {list(ITEM_KEYS)}")
    prompt = check_prompt(obj.get("prompt"))
    item_id = obj.get("id", line_id(line))
    if isinstance(item_id, numbers.Integral) and not isinstance(item_id, bool):
        item_id = str(item_id)
    if not isinstance(item_id, str) or not ID_PATTERN.fullmatch(item_id):
        raise ValueError(f"id: {item_id!r} must be 1-128 characters of letters, digits, '.', '_', '-', "
                         "starting with a letter or digit (it names the file <id>.mp4)")
    seed = obj.get("seed")
    if seed is None:
        seed = derive_seed(item_id)
    elif isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: must be an integer in [0, 2**63 - 1], got {seed!r}")
    given = {k: obj[k] for k in ITEM_SETTINGS if k in obj}
    video = obj.get("video")
    if video is not None:
        if not isinstance(video, str) or not os.path.isfile(os.path.join(folder, video)):
            raise ValueError(f"video: {video!r} is not a video file (paths are relative to the prompts file)")
        if "num_frames" in given or "noise" in given:
            raise ValueError("num_frames, noise: an item with a video takes its frames from it; leave them out")
        video = os.path.abspath(os.path.join(folder, video))
    elif "strength" in given:
        raise ValueError("strength: only for an item with a video")
    base = defaults.video_to_video if video is not None else defaults.text_to_video
    settings = check_settings({**base, **given})
    if geometry is not None and video is None:
        settings.sized(*geometry)
    return Item(line, item_id, prompt, int(seed), {**base, **given}, video, parse_lora(obj.get("lora"), folder))


def parse_lora(value: Any, folder: str | os.PathLike) -> tuple[tuple[str, float], ...]:
    """An item's ``lora`` (``"PATH[:SCALE]"`` or a list of them) -> ((absolute path or Hub id, scale), ...)."""
    if value is None:
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(f"lora: must be \"PATH[:SCALE]\" or a list of them, got {value!r}")
    out = []
    for entry in entries:
        path, sep, scale = entry.rpartition(":")
        try:
            path, scale = (path, float(scale)) if sep and path else (entry, 1.0)
        except ValueError:
            path, scale = entry, 1.0
        local = os.path.join(folder, path)
        if os.path.exists(local):
            path = os.path.abspath(local)
        elif not HUB_ID.fullmatch(path):
            raise ValueError(f"lora: {path!r} is neither a file or folder (paths are relative to the prompts "
                             "file) nor a Hub id such as org/name")
        out.append((path, scale))
    return tuple(out)


def read_items(path: str | os.PathLike, defaults: Defaults,
               geometry: tuple[int, int] | None = None) -> tuple[list[Item], list[dict]]:
    """Parse a prompts file: ``(items, errors)``; each error is ``{"line", "error"}`` (+ ``"id"``).

    Blank lines and lines starting with ``#`` are skipped. A later line repeating an earlier id is an error.
    ``defaults`` are the resolved settings every item starts from; ``geometry`` as in :func:`parse_item`.
    """
    items: list[Item] = []
    errors: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(text.rstrip("\r\n"))  # an error at the line's end is on this line, not the next
            except json.JSONDecodeError as e:
                errors.append({"line": number, "error": f"not valid JSON: {e.msg} (column {e.colno})"})
                continue
            try:
                item = parse_item(obj, number, defaults, geometry, os.path.dirname(os.path.abspath(path)))
            except ValueError as e:
                errors.append({"line": number, "error": str(e)})
                continue
            if item.id in seen:
                errors.append({"line": number, "id": item.id,
                               "error": f"id: {item.id!r} is already used on line {seen[item.id]}"})
                continue
            seen[item.id] = number
            items.append(item)
    return items, errors

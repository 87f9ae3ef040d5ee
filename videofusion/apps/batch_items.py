"""The prompts file of `videofusion batch`: JSONL lines -> checked :class:`Item` s, bad lines with their numbers.

Each line is a JSON object ``{"prompt": ..., "id": ..., "seed": ..., <settings>}`` (see :data:`ITEM_KEYS`);
the settings are exactly the pipeline call's keyword arguments (:data:`PIPELINE_DEFAULTS`).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any

from ..noise import NOISE_MODES
from ..pipelines.text_to_video import check_sizes

# Per-item settings: exactly the pipeline call's keyword arguments, with their defaults.
PIPELINE_DEFAULTS: dict[str, Any] = {
    "negative_prompt": None, "num_frames": 16, "num_inference_steps": 50, "guidance_scale": 9.0,
    "height": None, "width": None, "noise": "independent", "noise_ratio": 0.5,
}
ITEM_KEYS = ("prompt", "id", "seed", *PIPELINE_DEFAULTS)
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


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: Any) -> bool:
    """An integer >= 1, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def derive_seed(item_id: str) -> int:
    """A stable seed in [0, 2**31) from an item id (first 8 bytes of its SHA-256)."""
    return int.from_bytes(hashlib.sha256(item_id.encode("utf-8")).digest()[:8], "big") % 2**31


def line_id(line: int) -> str:
    """The id of an item whose line sets none: ``line-000007`` for line 7."""
    return f"line-{line:06d}"


def check_settings(settings: dict[str, Any], where: str = "settings") -> None:
    """ValueError naming the key unless every pipeline setting in ``settings`` has an accepted value."""
    unknown = sorted(set(settings) - set(PIPELINE_DEFAULTS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; accepted: {list(PIPELINE_DEFAULTS)}")
    sizes = {k: settings[k] for k in ("height", "width", "num_frames", "num_inference_steps")
             if settings.get(k) is not None}
    check_sizes(**{"height": 8, "width": 8, "num_frames": 1, "num_inference_steps": 1, **sizes})  # as the CLI does
    if "guidance_scale" in settings and not is_number(settings["guidance_scale"]):
        raise ValueError(f"guidance_scale: must be a number, got {settings['guidance_scale']!r}")
    negative = settings.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"negative_prompt: must be a string or null, got {negative!r}")
    if "noise" in settings and settings["noise"] not in NOISE_MODES:
        raise ValueError(f"noise: {settings['noise']!r} is not one of {list(NOISE_MODES)}")
    if "noise_ratio" in settings and not (is_number(settings["noise_ratio"]) and 0 <= settings["noise_ratio"] <= 1):
        raise ValueError(f"noise_ratio: must be a number in [0, 1], got {settings['noise_ratio']!r}")


def parse_item(obj: Any, line: int, defaults: dict[str, Any]) -> Item:
    """One decoded JSONL line -> an :class:`Item` with resolved settings; ValueError saying what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object such as {{\"prompt\": \"...\"}}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(ITEM_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; accepted: {list(ITEM_KEYS)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt: must be a non-empty string, got {prompt!r}")
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
    given = {k: obj[k] for k in PIPELINE_DEFAULTS if k in obj}
    check_settings(given)
    return Item(line, item_id, prompt, int(seed), {**defaults, **given})


def read_items(path: str | os.PathLike, defaults: dict[str, Any]) -> tuple[list[Item], list[dict]]:
    """Parse a prompts file: ``(items, errors)``; each error is ``{"line", "error"}`` (+ ``"id"``).

    Blank lines and lines starting with ``#`` are skipped. A later line repeating an earlier id is an error.
    ``defaults`` are the resolved settings every item starts from.
    """
    items: list[Item] = []
    errors: list[dict] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                errors.append({"line": number, "error": f"not valid JSON: {e.msg} (column {e.colno})"})
                continue
            try:
                item = parse_item(obj, number, defaults)
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

"""The settings of a generation request: every default and every check, in one place.

The pipeline call, ``videofusion generate``, the web page and batch items all build a
:class:`GenerationSettings`, so the same request is accepted or refused the same way everywhere, before
any model loads. A refused value raises :class:`SettingError`, a ValueError that names the setting (the
pipeline's argument name), the value given and what is accepted; front ends translate the name into
their own (``num_inference_steps`` is ``--steps`` on the command line).

The defaults are diffusers' ``TextToVideoSDPipeline`` defaults. A model may recommend others (the
built-in demo model: :data:`videofusion.demo.DEMO_DEFAULTS`); front ends apply those over these.
Checks that need the model (the VAE's scale factor for ``height``/``width``) are in :meth:`GenerationSettings.sized`.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["DEFAULTS", "VIDEO_TO_VIDEO_DEFAULTS", "GenerationSettings", "SettingError", "check_prompt", "is_count",
           "is_number"]

from .errors import SettingError
from .long_video import LongVideo
from .noise import NOISE_MODES


def is_count(value: Any) -> bool:
    """An integer >= 1, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_prompt(prompt: Any, name: str = "prompt") -> str:
    """A front end's prompt: non-empty text (surrounding spaces removed). The pipeline itself also takes
    an empty string (no conditioning), as diffusers does; a person typing nothing made a mistake."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise SettingError(name, prompt, "a non-empty text describing the video")
    return prompt.strip()


@dataclass(frozen=True)
class GenerationSettings:
    """One generation request's settings, checked when built (see the module docstring).

    num_frames: frames per video (default 16, the ModelScope training length).
    num_inference_steps: denoising steps (default 50).
    guidance_scale: classifier-free guidance weight, a finite number (default 9.0); <= 1 turns it off.
    height, width: pixels; ``None`` (default) is the model's native size. Divisible by the VAE's scale
        factor (8 for the published checkpoints), checked by :meth:`sized`.
    negative_prompt: what to steer away from, or None (default).
    eta: DDIM's eta, >= 0 (default 0: deterministic); only schedulers that have one accept > 0.
    noise: ``"independent"`` (default) or VideoFusion's ``"decomposed"`` initial noise.
    noise_ratio: weight of the shared base noise for ``"decomposed"``, in [0, 1] (default 0.5).
    long_video: a :class:`~videofusion.long_video.LongVideo` (FreeNoise) or None (default).
    strength: video-to-video only: how much of the schedule re-generates the input, in (0, 1] (default 0.6;
        1 starts from pure noise, small values keep more of the input).
    """

    num_frames: int = 16
    num_inference_steps: int = 50
    guidance_scale: float = 9.0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    eta: float = 0.0
    noise: str = "independent"
    noise_ratio: float = 0.5
    long_video: LongVideo | None = None
    strength: float = 0.6

    def __post_init__(self) -> None:
        for name in ("num_frames", "num_inference_steps"):
            if not is_count(getattr(self, name)):
                raise SettingError(name, getattr(self, name), "an integer >= 1")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and not is_count(value):
                raise SettingError(name, value, "an integer >= 1 (pixels) or None for the model's size")
        if not is_number(self.guidance_scale):
            raise SettingError("guidance_scale", self.guidance_scale, "a finite number (<= 1 turns guidance off)")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise SettingError("negative_prompt", self.negative_prompt, "a string or None")
        if not is_number(self.eta) or self.eta < 0:
            raise SettingError("eta", self.eta, "a number >= 0")
        if self.noise not in NOISE_MODES:
            raise SettingError("noise", self.noise, f"one of {', '.join(NOISE_MODES)}")
        if not is_number(self.noise_ratio) or not 0 <= self.noise_ratio <= 1:
            raise SettingError("noise_ratio", self.noise_ratio, "a number in [0, 1]")
        if not is_number(self.strength) or not 0 < self.strength <= 1:
            raise SettingError("strength", self.strength, "a number in (0, 1] (1: from pure noise)")
        if self.long_video is not None and not isinstance(self.long_video, LongVideo):
            raise TypeError(f"long_video: must be None or a videofusion.LongVideo(window=..., stride=...), "
                            f"got {type(self.long_video).__name__}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], accepted: tuple[str, ...] | None = None) -> "GenerationSettings":
        """Settings from a mapping (a batch line, a config): unknown keys, or keys outside ``accepted``
        (default: every field), are a SettingError listing the accepted ones."""
        accepted = accepted or tuple(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(values) - set(accepted))
        if unknown:
            raise SettingError("settings", unknown, f"keys among {', '.join(accepted)}")
        return cls(**values)

    def replace(self, **changes: Any) -> "GenerationSettings":
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def sized(self, native_size: int, scale_factor: int) -> "GenerationSettings":
        """``height``/``width`` resolved (None -> ``native_size`` pixels) and checked to be divisible by
        ``scale_factor``, the pixels per latent cell of the model's VAE."""
        height, width = self.height or native_size, self.width or native_size
        for name, value in (("height", height), ("width", width)):
            if value % scale_factor:
                raise SettingError(name, value, f"divisible by {scale_factor} (the VAE's scale factor), "
                                                f"e.g. {max(scale_factor, value // scale_factor * scale_factor)}")
        return self.replace(height=height, width=width)

    def to_dict(self) -> dict[str, Any]:
        """The settings as keyword arguments of a pipeline call."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


DEFAULTS = GenerationSettings()
# diffusers' VideoToVideoSDPipeline guides harder by default (it re-generates a video that already has layout)
VIDEO_TO_VIDEO_DEFAULTS = GenerationSettings(guidance_scale=15.0)

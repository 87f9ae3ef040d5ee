"""Diffusion schedulers: one file per algorithm, pure step functions inside, a thin class for config.

Every class reads a diffusers ``scheduler_config.json`` dict, so algorithms swap as in diffusers::

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

``SCHEDULERS`` maps the short names the CLI and web UI accept to (class, config overrides).
"""
from __future__ import annotations

from typing import Any

from .base import Scheduler, SchedulerConfig, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpm_multistep import DPMSolverMultistepScheduler
from .dpm_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

SCHEDULERS: dict[str, tuple[type[Scheduler], dict[str, Any]]] = {
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "dpm++2m": (DPMSolverMultistepScheduler, {}),
    "dpm++2m-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    "dpm-singlestep": (DPMSolverSinglestepScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
}

SCHEDULER_CLASSES: list[type[Scheduler]] = [
    DDIMScheduler, DDPMScheduler, PNDMScheduler, LMSDiscreteScheduler, EulerDiscreteScheduler,
    EulerAncestralDiscreteScheduler, HeunDiscreteScheduler, DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler, UniPCMultistepScheduler, DEISMultistepScheduler,
]


def get_scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class for a short name ("dpm++2m") or a class name ("DDIMScheduler").

    Short names with config overrides (e.g. "dpm++2m-karras") need them too: use
    :func:`make_scheduler` to build the scheduler.
    """
    if name in SCHEDULERS:
        return SCHEDULERS[name][0]
    by_class = {cls.__name__: cls for cls in SCHEDULER_CLASSES}
    if name in by_class:
        return by_class[name]
    raise ValueError(f"unknown scheduler {name!r}; accepted: {sorted(SCHEDULERS)} or {sorted(by_class)}")


def make_scheduler(name: str, config: dict[str, Any]) -> Scheduler:
    """Build scheduler ``name`` (short or class name) from another scheduler's ``config`` (usually the
    checkpoint's), applying the short name's overrides: ``make_scheduler("dpm++2m-karras", cfg)``."""
    overrides = SCHEDULERS[name][1] if name in SCHEDULERS else {}
    return get_scheduler_class(name).from_config(config, **overrides)


__all__ = [
    "Scheduler", "SchedulerConfig", "SchedulerOutput", "SCHEDULERS", "SCHEDULER_CLASSES", "get_scheduler_class",
    "make_scheduler",
    "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
    "HeunDiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler", "UniPCMultistepScheduler",
]

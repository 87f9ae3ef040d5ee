"""Diffusion schedulers: one file per algorithm, pure step functions inside, a thin class for config.

Every class reads a diffusers ``scheduler_config.json`` dict, so algorithms swap as in diffusers::

    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

Shared code: :mod:`.config` (the ``Scheduler`` base class, ``SchedulerConfig``, ``SchedulerOutput``),
:mod:`.schedules` (betas, timestep grids), :mod:`.predictions` (x0 from the model output, thresholding),
:mod:`.sigmas` (noise levels; base of Euler, Euler a, Heun, LMS), :mod:`.multistep` (base and helpers of
DPM-Solver++, UniPC, DEIS).

``SCHEDULERS`` is the one registry: it maps the short names the CLI and web UI accept to (class, config
overrides); ``SCHEDULER_CLASSES`` and the class-name lookup of :func:`get_scheduler_class` derive from it.
"""
from __future__ import annotations

from typing import Any

from .config import Scheduler, SchedulerConfig, SchedulerOutput
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .deis import DEISMultistepScheduler
from .dpm_multistep import DPMSolverMultistepScheduler
from .dpm_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .lcm import LCMScheduler, LCMSchedulerOutput
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

# short name -> (class, config overrides); every class appears here, first under a name without overrides
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
    "lcm": (LCMScheduler, {}),
}

# every scheduler class, each once, in the order of SCHEDULERS
SCHEDULER_CLASSES: list[type[Scheduler]] = list(dict.fromkeys(cls for cls, _ in SCHEDULERS.values()))
_BY_CLASS_NAME: dict[str, type[Scheduler]] = {cls.__name__: cls for cls in SCHEDULER_CLASSES}


def get_scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler class for a short name ("dpm++2m") or a class name ("DDIMScheduler").

    Short names with config overrides (e.g. "dpm++2m-karras") need them too: use
    :func:`make_scheduler` to build the scheduler.
    """
    if name in SCHEDULERS:
        return SCHEDULERS[name][0]
    if name in _BY_CLASS_NAME:
        return _BY_CLASS_NAME[name]
    raise ValueError(f"unknown scheduler {name!r}; accepted: {sorted(SCHEDULERS)} or {sorted(_BY_CLASS_NAME)}")


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
    "HeunDiscreteScheduler", "LCMScheduler", "LCMSchedulerOutput", "LMSDiscreteScheduler", "PNDMScheduler",
    "UniPCMultistepScheduler",
]

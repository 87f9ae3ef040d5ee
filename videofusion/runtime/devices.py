"""Devices and dtypes: the one place that decides where and in what precision models run.

``"auto"`` always means the same order, everywhere (CLI, web, batch, training, offload): CUDA, then
Apple's MPS, then the CPU. The default dtype is float16 on CUDA and MPS, float32 on the CPU (float16
on the CPU runs on slow fallback kernels).
"""
from __future__ import annotations

import os
import warnings

import torch

from ..errors import SettingError

DTYPES = ("auto", "float32", "float16", "bfloat16")


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA if available, else MPS, else the CPU. Any other name (``"cpu"``, ``"cuda:1"``,
    ``"mps"``) is checked: SettingError naming ``device`` when it is malformed or not available here."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise SettingError("device", name, "auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError("device", str(device), "auto or cpu: CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SettingError("device", str(device), f"one of the {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not mps_available():
        raise SettingError("device", str(device), "auto or cpu: MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise SettingError("device", str(device), "auto, cpu, cuda, cuda:N or mps")
    return device


def device_map_device(device_map: str | torch.device | None) -> torch.device | None:
    """The one device ``from_pretrained(device_map=...)`` puts a whole pipeline on (None: no device_map).
    diffusers takes the name of a device there ("cpu", "cuda", "mps"); so do we, and any device
    :func:`pick_device` accepts ("cuda:1", a torch.device). SettingError naming ``device_map`` for a map that
    spreads the components over devices ("balanced", "auto", a dict), which videofusion does not do, or a
    device that is not available here."""
    if device_map is None:
        return None
    if not isinstance(device_map, (str, torch.device)) or device_map in ("auto", "balanced", "balanced_low_0",
                                                                         "sequential"):
        raise SettingError("device_map", device_map, "one device such as 'cpu' or 'cuda' (videofusion puts the "
                           "whole pipeline on one device; enable_model_cpu_offload() saves accelerator memory)")
    try:
        return pick_device(device_map)
    except SettingError as e:
        raise SettingError("device_map", device_map, e.accepted) from None


def pick_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"``: float16 on CUDA and MPS, float32 on the CPU; else the named floating dtype
    (one of :data:`DTYPES`). SettingError naming ``dtype`` otherwise."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise SettingError("dtype", name, f"one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_threads() -> int:
    """torch's CPU threads when none are asked for: half of :func:`usable_cpus`, at least one. Leaving half
    free keeps a machine with other busy processes from being oversubscribed (measured on 2 cores with one
    busy process: 1 thread 2.0 s, 2 threads 6-7 s for the demo video; idle, 2 threads are 15% faster).
    The number is fixed per machine, not read from the load, because results differ in the last bits
    between thread counts: the same request on one machine gives the same video."""
    return max(1, usable_cpus() // 2)


def accelerator_device(gpu_id: int | None = None, device: torch.device | str | None = None) -> torch.device | None:
    """The accelerator that offload should target: ``device`` if given, else ``cuda:<gpu_id>`` (or MPS)
    when one exists, else ``None`` (no accelerator: offload has nothing to do)."""
    if device is not None:
        device = torch.device(device)
        if gpu_id is not None and device.index is None:
            device = torch.device(device.type, gpu_id)
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_id or 0)
    return torch.device("mps") if mps_available() else None


def warn_no_accelerator(what: str) -> None:
    warnings.warn(f"{what}: no accelerator (CUDA or MPS) found, so there is nothing to offload to; "
                  "the models stay on the CPU and the call runs there unchanged.", stacklevel=3)

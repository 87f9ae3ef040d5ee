"""Shared helpers for scheduler tests: a toy denoiser, a sampling loop, and comparisons against
diffusers' scheduler of the same name (the oracle; tests only, never the library)."""
from __future__ import annotations

import math

import diffusers
import pytest
import torch
from diffusers.utils import is_scipy_available

# scheduler/scheduler_config.json of damo-vilab/text-to-video-ms-1.7b (as published, with diffusers'
# bookkeeping keys)
MODELSCOPE_DDIM_CONFIG = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.15.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "clip_sample_range": 1.0,
    "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "thresholding": False, "trained_betas": None,
}

SHAPE = (1, 4, 2, 8, 8)  # (batch, channels, num_frames, height, width)


def initial_sample(seed: int = 0, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def toy_model(sample: torch.Tensor, t) -> torch.Tensor:
    """A fixed smooth function of (sample, t) standing in for the UNet."""
    t = float(t)
    return 0.1 * sample * math.cos(t / 100) + 0.05 * torch.sin(sample * 3 + t / 300)


def diffusers_twin(cls: type):
    """diffusers' class with the same name as our scheduler class (skips the test where diffusers
    needs scipy for it and scipy is absent: LMSDiscreteScheduler)."""
    if cls.__name__ == "LMSDiscreteScheduler" and not is_scipy_available():
        pytest.skip("diffusers' LMSDiscreteScheduler needs scipy (pip install scipy)")
    return getattr(diffusers, cls.__name__)


def run(scheduler, num_inference_steps: int | None, seed: int | None = None, sample: torch.Tensor | None = None,
        schedule: dict | None = None, **step_kwargs) -> dict:
    """Sample with ``toy_model``: returns timesteps, init_noise_sigma, every scaled model input,
    every step's prev_sample and pred_original_sample. ``seed`` makes a torch.Generator passed to step;
    ``schedule``: set_timesteps keywords (e.g. custom ``timesteps``) used instead of num_inference_steps."""
    if schedule is None:
        scheduler.set_timesteps(num_inference_steps)
    else:
        scheduler.set_timesteps(**schedule)
    x = (initial_sample() if sample is None else sample) * scheduler.init_noise_sigma
    if seed is not None:
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    rec = {"timesteps": scheduler.timesteps.clone(), "init_noise_sigma": float(scheduler.init_noise_sigma),
           "inputs": [], "samples": [], "x0": []}
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(x, t)
        out = scheduler.step(toy_model(inp, t), t, x, **step_kwargs)
        x = out.prev_sample
        rec["inputs"].append(inp)
        rec["samples"].append(x)
        rec["x0"].append(getattr(out, "pred_original_sample", None))
    return rec


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, what: str = "") -> None:
    """|a - b| <= rtol * max|b| elementwise (relative to the tensor's scale), same shape and dtype."""
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    scale = max(b.abs().max().item(), 1e-6)
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g} > {rtol} * {scale:.3g}"


def assert_same_run(ours: dict, theirs: dict, rtol: float = 1e-5) -> None:
    assert ours["timesteps"].dtype == theirs["timesteps"].dtype, (ours["timesteps"].dtype, theirs["timesteps"].dtype)
    torch.testing.assert_close(ours["timesteps"], theirs["timesteps"], rtol=1e-6, atol=1e-4)
    assert math.isclose(ours["init_noise_sigma"], theirs["init_noise_sigma"], rel_tol=1e-6)
    assert len(ours["samples"]) == len(theirs["samples"])
    for i, (a, b) in enumerate(zip(ours["inputs"], theirs["inputs"])):
        close(a, b, rtol, f"model input {i}")
    for i, (a, b) in enumerate(zip(ours["samples"], theirs["samples"])):
        close(a, b, rtol, f"prev_sample {i}")
    for i, (a, b) in enumerate(zip(ours["x0"], theirs["x0"])):
        if a is not None and b is not None:
            close(a, b, rtol, f"pred_original_sample {i}")


def assert_config_matches(ours, theirs, cls) -> None:
    """Our scheduler config agrees with diffusers' for the same class built the same way.

    Every key we hold has diffusers' value. diffusers may hold more: options of its class that we
    do not read (e.g. flow-matching ``flow_shift``), which must then be at diffusers' default (listed
    in its ``_use_default_values``). The defaulted keys we read are the ones diffusers defaulted.
    """
    ours, theirs = dict(ours), dict(theirs)
    ours_defaulted = set(ours.pop("_use_default_values", []))
    theirs_defaulted = set(theirs.pop("_use_default_values", []))
    ours.pop("_diffusers_version", None)
    theirs.pop("_diffusers_version", None)
    name = cls.__name__
    for k, v in ours.items():
        assert k in theirs and theirs[k] == v, f"{name}: config[{k!r}] ours {v!r}, diffusers {theirs.get(k, 'MISSING')!r}"
    for k in set(theirs) - set(ours):
        assert k not in cls.defaults and k in theirs_defaulted, f"{name}: diffusers has {k}={theirs[k]!r}, ours lacks it"
    expected = theirs_defaulted & set(cls.defaults)
    assert ours_defaulted == expected, (name, ours_defaulted ^ expected)

"""Training noise schedules and inference timestep grids, as diffusers computes them.

The training schedule is beta_1..beta_T (``make_betas``, optionally rescaled to zero terminal SNR);
every scheduler derives alphas / alphas_cumprod (and the sigma-based ones, noise levels) from it.
The inference grid is the descending list of training timesteps a sampling run visits
(``spaced_timesteps``, validated by ``check_num_inference_steps``). All functions are pure.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


# ----------------------------------------------------------------------------- noise schedules

def betas_for_alpha_bar(num_train_timesteps: int, alpha_transform_type: str = "cosine",
                        max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021, eq. 17).

    ``cosine`` is the improved-DDPM cosine schedule ("squaredcos_cap_v2"); ``exp`` and ``laplace``
    are the variants diffusers offers. Betas are capped at ``max_beta``. Returns float32 (T,).
    """
    if alpha_transform_type == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif alpha_transform_type == "exp":
        def alpha_bar(t):
            return math.exp(t * -12.0)
    elif alpha_transform_type == "laplace":
        def alpha_bar(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    else:
        raise ValueError("alpha_transform_type must be one of 'cosine', 'exp', 'laplace', "
                         f"got {alpha_transform_type!r}")
    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float,
               trained_betas: Sequence[float] | None = None) -> torch.Tensor:
    """The training noise schedule beta_1..beta_T as float32 (T,), computed as diffusers does.

    ``linear``: evenly spaced betas (Ho et al. 2020); ``scaled_linear``: evenly spaced sqrt(beta),
    squared (latent diffusion / Stable Diffusion, ModelScope); ``squaredcos_cap_v2``: cosine
    alpha_bar; ``exp`` / ``laplace``: alpha_bar variants; ``sigmoid``: GeoDiff. ``trained_betas``
    (a list or array) overrides all of them.
    """
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps, "cosine")
    if beta_schedule in ("exp", "laplace"):
        return betas_for_alpha_bar(num_train_timesteps, beta_schedule)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES + ('exp', 'laplace', 'sigmoid')}, "
                     f"got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last timestep has zero SNR (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Algorithm 1). Shape (T,) in and out."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


# ----------------------------------------------------------------------------- timesteps

def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int) -> None:
    """ValueError unless 1 <= num_inference_steps <= num_train_timesteps (an int)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps={num_train_timesteps}, "
                         f"got {num_inference_steps}")


def check_schedule_args(num_inference_steps: int | None, timesteps: Any = None, sigmas: Any = None,
                        respacing_flag: str | None = None) -> None:
    """diffusers' checks of ``set_timesteps(num_inference_steps, timesteps=..., sigmas=...)`` (ValueError):
    not both custom timesteps and sigmas, exactly one of the three, and no custom timesteps while the
    config flag ``respacing_flag`` (e.g. 'use_karras_sigmas') respaces the noise levels."""
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` should be set.")
    if num_inference_steps is None and timesteps is None and sigmas is None:
        raise ValueError("Must pass exactly one of `num_inference_steps` or `timesteps` or `sigmas`.")
    if num_inference_steps is not None and (timesteps is not None or sigmas is not None):
        raise ValueError("Can only pass one of `num_inference_steps` or `timesteps` or `sigmas`.")
    if timesteps is not None and respacing_flag:
        raise ValueError(f"Cannot set `timesteps` with `config.{respacing_flag} = True`.")


def check_custom_timesteps(timesteps: Sequence[int] | np.ndarray | torch.Tensor,
                           num_train_timesteps: int) -> np.ndarray:
    """DDPM's ``set_timesteps(timesteps=...)`` as diffusers checks it: strictly descending (ValueError),
    the first below ``num_train_timesteps`` (ValueError). Returns them as int64 numpy (n,)."""
    values = np.array(timesteps)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"timesteps must be a non-empty 1-d sequence, got {timesteps!r}")
    if np.any(values[1:] >= values[:-1]):
        raise ValueError("`custom_timesteps` must be in descending order.")
    if values[0] >= num_train_timesteps:
        raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: {num_train_timesteps}.")
    return values.astype(np.int64)


def rounded_timesteps(config: Any, num_inference_steps: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The DDPM-family schedule: ``spaced_timesteps`` per the config's spacing and offset, rounded to
    int64 (descending) on ``device``; validates the step count first."""
    check_num_inference_steps(num_inference_steps, config.num_train_timesteps)
    t = spaced_timesteps(config.num_train_timesteps, num_inference_steps, config.timestep_spacing,
                         config.steps_offset)
    return torch.from_numpy(np.round(t).astype(np.int64)).to(device)


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str,
                     steps_offset: int = 0) -> np.ndarray:
    """Descending inference timesteps as float64 numpy, as diffusers' schedulers space them
    (Lin et al. 2023, Table 2):

    * ``linspace``: ``num_inference_steps`` points evenly covering [0, T-1], NOT rounded here:
      DDIM/DDPM round them (``np.round(...).astype(np.int64)``), Euler/Heun/LMS keep the fractions.
    * ``leading``: ``arange(n) * (T // n) + steps_offset`` (integers).
    * ``trailing``: ``round(arange(T, 0, -T / n)) - 1`` (integers; ends at T-1).

    Schedulers whose diffusers variant differs (DPM-Solver's ``linspace`` of n+1 points, PNDM's
    PRK doubling) say so in their own ``set_timesteps``.
    """
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.float64) - 1
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")

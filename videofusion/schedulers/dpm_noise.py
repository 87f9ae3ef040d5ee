"""DPM-Solver in noise-prediction form (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for Diffusion
Probabilistic Model Sampling in Around 10 Steps"): diffusers' ``algorithm_type`` 'dpmsolver' (multistep and
singlestep) and 'sde-dpmsolver' (multistep, orders 1 and 2), deprecated there in favour of the data-prediction
DPM-Solver++ ('dpmsolver++'), which stays the default and the recommended solver. The updates integrate the
noise prediction eps over the half log-SNR lambda; they mirror the DPM-Solver++ updates of
:mod:`.dpm_multistep` and :mod:`.dpm_singlestep` (same arguments, eps in place of x0).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .multistep import half_log_snr, predict_epsilon, vp_alpha_sigma
from .predictions import dynamic_threshold

NOISE_PREDICTION_ALGORITHMS = ("dpmsolver", "sde-dpmsolver")


def check_noise_prediction_config(name: str, values: dict[str, Any]) -> None:
    """diffusers' rule: the noise-prediction solvers cannot land on sigma 0 (ValueError), and a FutureWarning
    as diffusers deprecates them."""
    algorithm = values.get("algorithm_type")
    if algorithm not in NOISE_PREDICTION_ALGORITHMS:
        return
    if values.get("final_sigmas_type") == "zero":
        raise ValueError(f"{name}: final_sigmas_type 'zero' is not supported for algorithm_type {algorithm!r}; "
                         "use final_sigmas_type='sigma_min'")
    if algorithm == "sde-dpmsolver" and values.get("solver_order") == 3:
        raise ValueError(f"{name}: algorithm_type 'sde-dpmsolver' has no third-order update; use solver_order 1 "
                         "or 2 (diffusers fails at the first third-order step)")
    warnings.warn(f"{name}: algorithm_type {algorithm!r} is deprecated in diffusers; 'dpmsolver++' / "
                  "'sde-dpmsolver++' are the maintained solvers", FutureWarning, stacklevel=5)


def noise_prediction(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor,
                     config: Any) -> torch.Tensor:
    """eps from the model output (diffusers' ``convert_model_output`` for 'dpmsolver'): with thresholding, the
    x0 it implies is thresholded and eps recomputed from it."""
    eps = predict_epsilon(model_output, sample, sigma, config.prediction_type)
    if config.thresholding:
        alpha_t, sigma_t = vp_alpha_sigma(sigma)
        x0 = dynamic_threshold((sample - sigma_t * eps) / alpha_t, config.dynamic_thresholding_ratio,
                               config.sample_max_value)
        eps = (sample - alpha_t * x0) / sigma_t
    return eps


def dpm_solver_first_order(sample: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                           noise: torch.Tensor | None = None) -> torch.Tensor:
    """DPM-Solver-1 from `sigma` to `sigma_next` (DDIM); with `noise` the SDE variant's first order."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s, _ = vp_alpha_sigma(sigma)
    h = half_log_snr(sigma_next) - half_log_snr(sigma)
    if noise is None:
        return (alpha_t / alpha_s) * sample - (sigma_t * (torch.exp(h) - 1.0)) * eps
    return ((alpha_t / alpha_s) * sample - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * eps
            + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise)


def dpm_solver_second_order(sample: torch.Tensor, eps: torch.Tensor, eps_other: torch.Tensor, sigma: torch.Tensor,
                            sigma_other: torch.Tensor, sigma_next: torch.Tensor, solver_type: str = "midpoint",
                            noise: torch.Tensor | None = None) -> torch.Tensor:
    """Second-order DPM-Solver from `sigma` (where `sample` and `eps` live) to `sigma_next`, the derivative of
    eps in lambda estimated from `eps_other` at `sigma_other` (multistep: the previous step; singlestep: the
    group's intermediate point, as :func:`.dpm_multistep.dpm_solver_pp_second_order`)."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s, _ = vp_alpha_sigma(sigma)
    lambda_s = half_log_snr(sigma)
    h = half_log_snr(sigma_next) - lambda_s
    r = (lambda_s - half_log_snr(sigma_other)) / h
    d1 = (1.0 / r) * (eps - eps_other)
    if noise is None:
        first = (alpha_t / alpha_s) * sample - (sigma_t * (torch.exp(h) - 1.0)) * eps
        if solver_type == "midpoint":
            return first - 0.5 * (sigma_t * (torch.exp(h) - 1.0)) * d1
        return first - (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
    first = (alpha_t / alpha_s) * sample - 2.0 * (sigma_t * (torch.exp(h) - 1.0)) * eps
    if solver_type == "midpoint":
        second = (sigma_t * (torch.exp(h) - 1.0)) * d1
    else:
        second = 2.0 * (sigma_t * ((torch.exp(h) - 1.0) / h - 1.0)) * d1
    return first - second + sigma_t * torch.sqrt(torch.exp(2 * h) - 1.0) * noise


def _third_order_terms(h: torch.Tensor, sigma_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return sigma_t * ((torch.exp(h) - 1.0) / h - 1.0), sigma_t * ((torch.exp(h) - 1.0 - h) / h**2 - 0.5)


def dpm_solver_3m(sample: torch.Tensor, eps3: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor], sigma_next: torch.Tensor) -> torch.Tensor:
    """Multistep DPM-Solver-3 from `sigmas[0]` to `sigma_next`; `eps3` / `sigmas` newest first."""
    m0, m1, m2 = eps3
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s0, _ = vp_alpha_sigma(sigmas[0])
    lambda_s0, lambda_s1, lambda_s2 = (half_log_snr(s) for s in sigmas)
    h, h_0, h_1 = half_log_snr(sigma_next) - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    c1, c2 = _third_order_terms(h, sigma_t)
    return (alpha_t / alpha_s0) * sample - (sigma_t * (torch.exp(h) - 1.0)) * m0 - c1 * d1 - c2 * d2


def dpm_solver_3s(sample: torch.Tensor, eps3: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                  sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor], sigma_next: torch.Tensor,
                  solver_type: str = "midpoint") -> torch.Tensor:
    """Singlestep DPM-Solver-3 from the group's first point `sigmas[0]` (where `sample` lives) to `sigma_next`;
    `eps3` / `sigmas` oldest first (see :func:`.dpm_singlestep.dpm_solver_pp_3s`)."""
    m2, m1, m0 = eps3
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s2, _ = vp_alpha_sigma(sigmas[0])
    lambda_s2, lambda_s1, lambda_s0 = (half_log_snr(s) for s in sigmas)
    h, h_0, h_1 = half_log_snr(sigma_next) - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r1) * (m1 - m2), (1.0 / r0) * (m0 - m2)
    c1, c2 = _third_order_terms(h, sigma_t)
    x_t = (alpha_t / alpha_s2) * sample - (sigma_t * (torch.exp(h) - 1.0)) * m2
    if solver_type == "midpoint":
        return x_t - c1 * d1_1
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    return x_t - c1 * d1 - c2 * d2

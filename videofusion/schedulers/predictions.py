"""From the model's output to the clean-sample estimate x0, and keeping x0 in range.

``predict_x0_eps`` converts an epsilon / v / sample prediction at cumulative alpha abar_t (the
DDPM family's parametrisation: DDIM, DDPM); the sigma-based and exponential-integrator schedulers
have their own conversions in :mod:`.sigmas` and :mod:`.multistep`. ``dynamic_threshold`` (Imagen)
and ``threshold_or_clip`` bound x0 before it is used.
"""
from __future__ import annotations

from typing import Any

import torch


def predict_x0_eps(model_output: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
                   prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from the model output at a timestep with cumulative alpha ``alpha_prod_t``.

    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; ``epsilon`` predicts eps, ``sample`` predicts x0,
    ``v_prediction`` predicts v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022).
    """
    beta_prod_t = 1 - alpha_prod_t
    if prediction_type == "epsilon":
        return (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5, model_output
    if prediction_type == "sample":
        return model_output, (sample - alpha_prod_t ** 0.5 * model_output) / beta_prod_t ** 0.5
    if prediction_type == "v_prediction":
        return (alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output,
                alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample)
    raise ValueError(f"prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got {prediction_type!r}")


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3): per sample, s = the ``ratio``
    quantile of |x0| clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s.
    Computed in float32 (quantile needs it), returned in x0's dtype. Any shape (b, ...)."""
    dtype = x0.dtype
    b = x0.shape[0]
    flat = x0.reshape(b, -1)  # (b, c*f*h*w)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # (b, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def threshold_or_clip(x0: torch.Tensor, config: Any) -> torch.Tensor:
    """x0 as the DDPM family bounds it: ``dynamic_threshold`` when ``config.thresholding``, else
    clamped to [-clip_sample_range, clip_sample_range] when ``config.clip_sample``, else unchanged.
    ``config`` must read both keys (DDIM, DDPM). Shape and dtype of x0."""
    if config.thresholding:
        return dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    if config.clip_sample:
        return x0.clamp(-config.clip_sample_range, config.clip_sample_range)
    return x0

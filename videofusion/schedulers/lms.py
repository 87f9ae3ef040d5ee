"""LMS: linear multistep sampler on the discrete sigma schedule (k-diffusion ``sample_lms``)."""
from __future__ import annotations

import numpy as np
import torch

from .sigmas import SigmaScheduler, sigma_predict_x0, sigma_spacing

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)  # exact for polynomials of degree <= 7


def lms_coefficients(sigmas: np.ndarray, index: int, order: int) -> list[float]:
    """Adams-Bashforth weights in sigma for step ``index`` -> ``index + 1`` using the last ``order``
    derivatives: the integral over [sigma_i, sigma_{i+1}] of each Lagrange basis polynomial through
    sigma_i, sigma_{i-1}, ..., sigma_{i-order+1}. Entry j weights the derivative at sigma_{i-j}.

    Integrated exactly by Gauss-Legendre quadrature (diffusers uses scipy's adaptive ``quad``,
    which agrees to ~1e-7; order <= 4 means degree <= 3)."""
    a, b = float(sigmas[index]), float(sigmas[index + 1])
    taus = (b - a) / 2 * _GL_NODES + (a + b) / 2
    coeffs = []
    for cur in range(order):
        basis = np.ones_like(taus)
        for k in range(order):
            if k != cur:
                basis *= (taus - sigmas[index - k]) / (sigmas[index - cur] - sigmas[index - k])
        coeffs.append(float((b - a) / 2 * np.sum(_GL_WEIGHTS * basis)))
    return coeffs


class LMSDiscreteScheduler(SigmaScheduler):
    """Linear multistep (up to 4th order) on the probability-flow ODE in sigma.

    Config keys and defaults are diffusers' ``LMSDiscreteScheduler``'s (Karras / exponential /
    beta sigma spacing included). Deterministic; keeps the last 4 derivatives as state.
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                    prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0)
    lms_order = 4  # diffusers' step(order=4) default; the pipeline never changes it
    bounded_spacings = ("exponential", "beta")  # diffusers' LMS Karras sigmas ignore sigma_min / sigma_max

    def __init__(self, **config):
        super().__init__(**config)
        self.derivatives: list[torch.Tensor] = []  # the last lms_order slopes (x - x0) / sigma, oldest first
        self.set_timesteps(self.config.num_train_timesteps)  # as diffusers: every training timestep to start with

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Float32 timesteps (fractional for linspace / Karras) and their sigmas (+ a final 0)."""
        self._set_sigma_schedule(num_inference_steps, device, sigma_spacing(self.config))
        self.derivatives = []

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One LMS step of order min(step + 1, 4). Shapes (b, c, f, h, w). Deterministic:
        ``generator`` is accepted (the pipeline passes it to every scheduler) and not used."""
        i = self._start_step(timestep)
        sigma = self.sigmas[i]
        x0 = sigma_predict_x0(model_output, sample, sigma, self.config.prediction_type)
        self.derivatives.append((sample - x0) / sigma)
        if len(self.derivatives) > self.lms_order:
            self.derivatives.pop(0)
        order = min(i + 1, self.lms_order)
        coeffs = lms_coefficients(self.sigmas.numpy().astype(np.float64), i, order)
        prev_sample = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

"""DEIS: diffusion exponential integrator sampler (Zhang & Chen 2022, "Fast Sampling of Diffusion Models
with Exponential Integrator"), the multistep variant diffusers calls 'logrho': Adams-Bashforth-type
extrapolation (AB-DEIS) in rho = sigma / alpha.

The noise prediction is extrapolated by a Lagrange polynomial in log(rho) through the last 1-3 outputs and
integrated exactly over the step; order 1 is DDIM.
"""

from __future__ import annotations

import numpy as np
import torch

from .multistep import (
    ExponentialIntegratorScheduler,
    data_prediction,
    half_log_snr,
    multistep_order,
    reject_mu,
    sigma_spacing_of,
    vp_alpha_sigma,
)


def deis_first_order(
    sample: torch.Tensor, eps: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """First-order DEIS from VE noise level `sigma` to `sigma_next` with noise prediction `eps` (= DDIM)."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    alpha_s, _ = vp_alpha_sigma(sigma)
    h = half_log_snr(sigma_next) - half_log_snr(sigma)
    return (alpha_t / alpha_s) * sample - (sigma_t * (torch.exp(h) - 1.0)) * eps


def _rho(sigma: torch.Tensor) -> torch.Tensor:
    alpha, sig = vp_alpha_sigma(sigma)
    return sig / alpha


def _log(x: torch.Tensor) -> torch.Tensor:
    """log of a 0-d CPU tensor computed by numpy, as diffusers' DEIS does. The coefficients below are
    differences of nearly equal terms, so torch.log's last-bit differences would move samples by ~1e-5."""
    return torch.tensor(np.log(x.numpy()))


def _int_lagrange_2(t, b, c):
    """Antiderivative in t of the Lagrange basis (log t - log c) / (log b - log c)."""
    return t * (-_log(c) + _log(t) - 1) / (_log(b) - _log(c))


def _int_lagrange_3(t, b, c, d):
    """Antiderivative in t of (log t - log c)(log t - log d) / ((log b - log c)(log b - log d))."""
    lt, lc, ld = _log(t), _log(c), _log(d)
    numerator = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return numerator / ((_log(b) - lc) * (_log(b) - ld))


def deis_multistep(
    sample: torch.Tensor, eps: list[torch.Tensor], sigmas: list[torch.Tensor], sigma_next: torch.Tensor
) -> torch.Tensor:
    """Second- or third-order multistep DEIS (log-rho) from `sigmas[0]` to `sigma_next`.

    eps / sigmas: the last 2 or 3 noise predictions and their VE noise levels, newest first.
    x_next = alpha_next * (x / alpha + sum_j c_j eps_j), c_j = integral over [rho, rho_next] of the j-th
    Lagrange basis polynomial in log rho (Zhang & Chen 2022's AB-DEIS with rho as the time variable).
    """
    alpha_t, _ = vp_alpha_sigma(sigma_next)
    alpha_s0, _ = vp_alpha_sigma(sigmas[0])
    rho_t, rhos = _rho(sigma_next), [_rho(s) for s in sigmas]
    x = sample / alpha_s0
    if len(eps) == 2:
        (r0, r1), integral = rhos, _int_lagrange_2
        coefs = (integral(rho_t, r0, r1) - integral(r0, r0, r1), integral(rho_t, r1, r0) - integral(r0, r1, r0))
    elif len(eps) == 3:
        (r0, r1, r2), integral = rhos, _int_lagrange_3
        coefs = (
            integral(rho_t, r0, r1, r2) - integral(r0, r0, r1, r2),
            integral(rho_t, r1, r2, r0) - integral(r0, r1, r2, r0),
            integral(rho_t, r2, r0, r1) - integral(r0, r2, r0, r1),
        )
    else:
        raise ValueError(f"deis_multistep takes 2 or 3 past outputs, got {len(eps)}")
    for coef, e in zip(coefs, eps):
        x = x + coef * e
    return alpha_t * x


class DEISMultistepScheduler(ExponentialIntegratorScheduler):
    """Multistep DEIS (orders 1-3), diffusers' `DEISMultistepScheduler`.

    Config keys and defaults are diffusers'; `algorithm_type` / `solver_type` have one value each ('deis' /
    'logrho'; DPM-Solver's and UniPC's names map to them). The last sigma is the training minimum (the sampler
    never reaches sigma 0), or the last respaced sigma repeated. Not implemented (ValueError): the
    flow-matching options ('sde-dpmsolver++' has no DEIS counterpart either).
    """

    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, algorithm_type="deis", solver_type="logrho", lower_order_final=True,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False,
        timestep_spacing="linspace", steps_offset=0,
    )
    choices = {
        **ExponentialIntegratorScheduler.choices, "solver_order": (1, 2, 3), "algorithm_type": ("deis",),
        "solver_type": ("logrho",),
    }
    # other solvers' names, mapped as diffusers maps them (its DEIS has one algorithm and one solver type)
    option_aliases = {
        "algorithm_type": {"dpmsolver": "deis", "dpmsolver++": "deis"},
        "solver_type": {"midpoint": "logrho", "heun": "logrho", "bh1": "logrho", "bh2": "logrho"},
    }

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None, mu: float | None = None
    ) -> None:
        """Timesteps (int64, descending, on `device`) and sigmas (float32 CPU, plus the final sigma). `mu`
        (flow-matching dynamic shifting): UnsupportedOptionError, where diffusers fails an assert."""
        reject_mu(mu)
        c = self.config
        timesteps, sigmas = self._spaced_schedule(num_inference_steps, c.timestep_spacing, c.steps_offset)
        sigma_last = sigmas[-1] if sigma_spacing_of(self.own_config) else self._training_sigma_min()
        self._set_schedule(timesteps, sigmas, sigma_last, device)

    def _noise_prediction(self, model_output: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at the current step; eps is recomputed from the (optionally thresholded) x0, as diffusers does."""
        sigma = self.sigmas[self._step_index]
        x0 = data_prediction(model_output, sample, sigma, self.config)
        alpha_t, sigma_t = vp_alpha_sigma(sigma)
        return x0, (sample - alpha_t * x0) / sigma_t

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """One DEIS step from `timestep` to the next one in the schedule.

        model_output, sample: (b, c, f, h, w). Returns SchedulerOutput(prev_sample, pred_original_sample=x0) or
        that tuple. Deterministic: `generator` is accepted (the pipeline passes it to every scheduler) and not used.
        """
        i = self._start_step(timestep)
        c, n = self.config, len(self.timesteps)
        lower_final = i == n - 1 and c.lower_order_final and n < 15
        lower_second = i == n - 2 and c.lower_order_final and n < 15

        x0, eps = self._noise_prediction(model_output, sample)
        self.model_outputs = [*self.model_outputs[1:], eps]  # oldest first
        order = multistep_order(c.solver_order, self.lower_order_nums, lower_final, lower_second)
        if order == 1:
            prev = deis_first_order(sample, eps, self.sigmas[i], self.sigmas[i + 1])
        else:
            past = self.model_outputs[::-1][:order]  # newest first
            prev = deis_multistep(sample, past, [self.sigmas[i - k] for k in range(order)], self.sigmas[i + 1])
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        return self._output(prev, x0, return_dict)


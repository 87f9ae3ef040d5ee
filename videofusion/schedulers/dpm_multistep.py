"""DPM-Solver++ multistep sampler (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Alg. 2) and its SDE variant. The first- and second-order updates are
shared with the singlestep solver (dpm_singlestep); the noise-level notation (sigma, alpha_t, sigma_t,
lambda) and the schedule helpers are those of :mod:`.multistep`.
"""

from __future__ import annotations

import torch

from ..noise import randn
from .dpm_noise import (
    NOISE_PREDICTION_ALGORITHMS,
    check_noise_prediction_config,
    dpm_solver_3m,
    dpm_solver_first_order,
    dpm_solver_second_order,
    noise_prediction,
)
from .multistep import (
    ExponentialIntegratorScheduler,
    data_prediction,
    half_log_snr,
    lambda_clipped_last_timestep,
    multistep_order,
    reject_mu,
    respacing_flag,
    vp_alpha_sigma,
)
from .schedules import check_schedule_args

# ----------------------------------------------------------------------------------------------------
# per-step math (torch; sigmas are 0-d float32 tensors)


def dpm_solver_pp_first_order(
    sample: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    sigma_next: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """DPM-Solver++(1) from `sigma` to `sigma_next` (Lu et al. 2022; equals DDIM with eta=0).

    With `noise` (standard normal, shape of `sample`) it is SDE-DPM-Solver++(1),
    the first-order solver of the reverse SDE in data-prediction form.
    """
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    _, sigma_s = vp_alpha_sigma(sigma)
    h = half_log_snr(sigma_next) - half_log_snr(sigma)
    if noise is None:
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
    return (
        (sigma_t / sigma_s * torch.exp(-h)) * sample
        + (alpha_t * (1 - torch.exp(-2.0 * h))) * x0
        + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
    )


def dpm_solver_pp_second_order(
    sample: torch.Tensor,
    x0: torch.Tensor,
    x0_other: torch.Tensor,
    sigma: torch.Tensor,
    sigma_other: torch.Tensor,
    sigma_next: torch.Tensor,
    solver_type: str = "midpoint",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Second-order DPM-Solver++ step from `sigma` (where `sample` and `x0` live) to `sigma_next`, with the
    first derivative of x0 in lambda estimated from `x0_other` at `sigma_other`.

    Multistep DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) passes the previous step's x0 as `x0_other`; the
    singlestep DPM-Solver++(2S) (Alg. 1) starts from the earlier point and passes the intermediate one.
    `solver_type` 'midpoint' is the paper's update, 'heun' its Taylor variant; with `noise` it is the SDE
    solver (SDE-DPM-Solver++(2M)).
    """
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    _, sigma_s = vp_alpha_sigma(sigma)
    lambda_s = half_log_snr(sigma)
    h = half_log_snr(sigma_next) - lambda_s
    r = (lambda_s - half_log_snr(sigma_other)) / h
    d1 = (1.0 / r) * (x0 - x0_other)
    if noise is None:
        first = (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * x0
        if solver_type == "midpoint":
            return first - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        return first + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
    first = (sigma_t / sigma_s * torch.exp(-h)) * sample + (alpha_t * (1 - torch.exp(-2.0 * h))) * x0
    if solver_type == "midpoint":
        second = 0.5 * (alpha_t * (1 - torch.exp(-2.0 * h))) * d1
    else:
        second = (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
    return first + second + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


def dpm_solver_pp_3m(
    sample: torch.Tensor,
    x0s: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigma_next: torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multistep DPM-Solver++(3M) from `sigmas[0]` to `sigma_next` (Lu et al. 2022).

    `x0s` and `sigmas` run newest first: (current, previous, the one before). With `noise` it is the SDE variant.
    """
    m0, m1, m2 = x0s
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    _, sigma_s0 = vp_alpha_sigma(sigmas[0])
    lambda_t = half_log_snr(sigma_next)
    lambda_s0, lambda_s1, lambda_s2 = (half_log_snr(s) for s in sigmas)
    h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
    if noise is None:
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (torch.exp(-h) - 1.0)) * m0
            + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
    return (
        (sigma_t / sigma_s0 * torch.exp(-h)) * sample
        + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * m0
        + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
        + (alpha_t * ((1.0 - torch.exp(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 - 0.5)) * d2
        + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise
    )


class DPMSolverMultistepScheduler(ExponentialIntegratorScheduler):
    """DPM-Solver++ (2M by default; orders 1-3) and its SDE variant, diffusers' `DPMSolverMultistepScheduler`.

    Config keys and defaults are diffusers'. `algorithm_type` 'dpmsolver++' (ODE) or 'sde-dpmsolver++'
    (stochastic: `step` draws noise from `generator`); `solver_type` 'midpoint' or 'heun'; `lower_order_final`
    drops to first/second order on the last steps when there are fewer than 15; `euler_at_final` always takes a
    first-order last step; `final_sigmas_type` 'zero' (the last step lands on x0, first order) or 'sigma_min';
    `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas` / `use_lu_lambdas` respace the noise
    levels; `lambda_min_clipped` cuts the low-SNR end (for squaredcos_cap_v2). diffusers' deprecated
    noise-prediction 'dpmsolver' / 'sde-dpmsolver' run too (:mod:`.dpm_noise`; with final_sigmas_type
    'sigma_min', as there). Not implemented (ValueError): the flow-matching and learned-variance options
    (:func:`.multistep.reject_unsupported`; `variance_type` None or DDPM's values are accepted and do nothing,
    as in diffusers).
    """

    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        euler_at_final=False, use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
        use_lu_lambdas=False, use_flow_sigmas=False, final_sigmas_type="zero", lambda_min_clipped=-float("inf"),
        variance_type=None, timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False,
    )
    choices = {
        **ExponentialIntegratorScheduler.choices, "solver_order": (1, 2, 3),
        "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", *NOISE_PREDICTION_ALGORITHMS),
        "solver_type": ("midpoint", "heun"),
        "final_sigmas_type": ("zero", "sigma_min"),
    }
    # names other solvers' configs carry, mapped as diffusers maps them (DEIS -> DPM-Solver++, UniPC's B(h))
    option_aliases = {
        "algorithm_type": {"deis": "dpmsolver++"},
        "solver_type": {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"},
    }

    def _validate(self, values: dict) -> None:
        super()._validate(values)
        check_noise_prediction_config(type(self).__name__, values)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Timesteps (int64, descending, on `device`) and sigmas (float32 CPU, one more: the final sigma).

        Exactly one of `num_inference_steps` or `timesteps` (custom training timesteps, cast to int64, their
        sigmas interpolated; not with a respacing flag), as diffusers checks them. `mu` (flow-matching dynamic
        shifting) is not supported: UnsupportedOptionError, where diffusers fails an assert.
        """
        reject_mu(mu)
        c = self.config
        check_schedule_args(num_inference_steps, timesteps, respacing_flag=respacing_flag(self.own_config))
        if timesteps is not None:
            timesteps, sigmas = self._custom_schedule(timesteps)
        else:
            timesteps, sigmas = self._spaced_schedule(
                num_inference_steps, c.timestep_spacing, c.steps_offset,
                last_timestep=lambda_clipped_last_timestep(self.alphas_cumprod, c.lambda_min_clipped),
                round_timesteps=c.beta_schedule != "squaredcos_cap_v2",
            )
        sigma_last = 0 if c.final_sigmas_type == "zero" else self._training_sigma_min()
        self._set_schedule(timesteps, sigmas, sigma_last, device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """One DPM-Solver++ step from `timestep` to the next one in the schedule.

        model_output, sample: (b, c, f, h, w). The update runs in float32 and returns the model output's dtype.
        `generator` seeds the noise of 'sde-dpmsolver++'. Returns SchedulerOutput(prev_sample,
        pred_original_sample=the data prediction x0) or that tuple.
        """
        i = self._start_step(timestep)
        c, n = self.config, len(self.timesteps)
        # lower orders at the end stabilise few-step sampling; a final sigma of 0 needs a first-order last step
        lower_final = i == n - 1 and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        lower_second = i == n - 2 and c.lower_order_final and n < 15

        x0 = data_prediction(model_output, sample, self.sigmas[i], c)
        eps_form = c.algorithm_type in NOISE_PREDICTION_ALGORITHMS  # DPM-Solver: the history holds eps
        held = noise_prediction(model_output, sample, self.sigmas[i], c) if eps_form else x0
        self.model_outputs = [*self.model_outputs[1:], held]  # oldest first
        sample = sample.to(torch.float32)
        noise = None
        if c.algorithm_type.startswith("sde-"):
            noise = randn(model_output.shape, generator, model_output.device, torch.float32)

        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        order = multistep_order(c.solver_order, self.lower_order_nums, lower_final, lower_second)
        if eps_form:
            prev = self._noise_prediction_update(order, sample, held, i, noise)
        elif order == 1:
            prev = dpm_solver_pp_first_order(sample, x0, sigma, sigma_next, noise)
        elif order == 2:
            prev = dpm_solver_pp_second_order(
                sample, x0, self.model_outputs[-2], sigma, self.sigmas[i - 1], sigma_next, c.solver_type, noise
            )
        else:
            x0s = (x0, self.model_outputs[-2], self.model_outputs[-3])
            prev = dpm_solver_pp_3m(sample, x0s, (sigma, self.sigmas[i - 1], self.sigmas[i - 2]), sigma_next, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        return self._output(prev.to(model_output.dtype), x0, return_dict)

    def _noise_prediction_update(self, order: int, sample: torch.Tensor, eps: torch.Tensor, i: int,
                                 noise: torch.Tensor | None) -> torch.Tensor:
        """The 'dpmsolver' / 'sde-dpmsolver' update of step `i` (:mod:`.dpm_noise`)."""
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if order == 1:
            return dpm_solver_first_order(sample, eps, sigma, sigma_next, noise)
        if order == 2:
            return dpm_solver_second_order(sample, eps, self.model_outputs[-2], sigma, self.sigmas[i - 1],
                                           sigma_next, self.config.solver_type, noise)
        eps3 = (eps, self.model_outputs[-2], self.model_outputs[-3])
        return dpm_solver_3m(sample, eps3, (sigma, self.sigmas[i - 1], self.sigmas[i - 2]), sigma_next)

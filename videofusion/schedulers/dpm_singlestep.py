"""Singlestep DPM-Solver++ (Lu et al. 2022, "DPM-Solver++", Alg. 1 is its 2S; third order as DPM-Solver-3 of
Lu et al. 2022, "DPM-Solver", in data-prediction form).

A k-th order singlestep solver spends k model evaluations on one big step: the schedule is cut into groups
of k timesteps (`singlestep_orders`); the first evaluation of a group takes a first-order step to the next
timestep, and the group's last step restarts from the group's first sample using all k data predictions.
"""

from __future__ import annotations

import torch

from ..noise import randn
from .dpm_multistep import DPMSolverMultistepScheduler, dpm_solver_pp_first_order, dpm_solver_pp_second_order
from .dpm_noise import (
    check_noise_prediction_config,
    dpm_solver_3s,
    dpm_solver_first_order,
    dpm_solver_second_order,
    noise_prediction,
)
from .multistep import (
    ExponentialIntegratorScheduler,
    data_prediction,
    half_log_snr,
    lambda_clipped_last_timestep,
    reject_mu,
    respacing_flag,
    vp_alpha_sigma,
)
from .schedules import check_schedule_args


def singlestep_orders(num_steps: int, solver_order: int, lower_order_final: bool) -> list[int]:
    """Solver order at each of `num_steps` steps: repeating groups 1, 2, .., `solver_order`; with
    `lower_order_final` the tail is cut to a shorter group so the schedule ends on a group boundary
    (diffusers' `get_order_list`)."""
    steps, k = num_steps, solver_order
    if not lower_order_final or k == 1:
        return list(range(1, k + 1)) * (steps // k)
    if k == 2:
        return [1, 2] * (steps // 2 - 1) + [1, 1] if steps % 2 == 0 else [1, 2] * (steps // 2) + [1]
    if steps % 3 == 0:
        return [1, 2, 3] * (steps // 3 - 1) + [1, 2] + [1]
    return [1, 2, 3] * (steps // 3) + ([1] if steps % 3 == 1 else [1, 2])


def dpm_solver_pp_3s(
    sample: torch.Tensor,
    x0s: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    sigma_next: torch.Tensor,
    solver_type: str = "midpoint",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Third-order singlestep DPM-Solver++ (Lu et al. 2022, DPM-Solver-3 in data-prediction form) from the
    group's first point `sigmas[0]` (where `sample` lives) to `sigma_next`.

    `x0s` / `sigmas`: data predictions at the group's three points, oldest first. 'midpoint' uses only the
    first and last point for the derivative (the paper's DPM-Solver-3); 'heun' fits first and second
    derivatives through all three. With `noise`: the SDE variant.
    """
    m2, m1, m0 = x0s
    alpha_t, sigma_t = vp_alpha_sigma(sigma_next)
    _, sigma_s2 = vp_alpha_sigma(sigmas[0])
    lambda_s2, lambda_s1, lambda_s0 = (half_log_snr(s) for s in sigmas)
    h, h_0, h_1 = half_log_snr(sigma_next) - lambda_s2, lambda_s0 - lambda_s2, lambda_s1 - lambda_s2
    r0, r1 = h_0 / h, h_1 / h
    d1_0, d1_1 = (1.0 / r1) * (m1 - m2), (1.0 / r0) * (m0 - m2)
    d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
    d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
    if noise is None:
        x_t = (sigma_t / sigma_s2) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * m2
        if solver_type == "midpoint":
            return x_t + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1_1
        return (
            x_t
            + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )
    x_t = (sigma_t / sigma_s2 * torch.exp(-h)) * sample + (alpha_t * (1.0 - torch.exp(-2.0 * h))) * m2
    if solver_type == "midpoint":
        x_t = x_t + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1_1
    else:
        x_t = (
            x_t
            + (alpha_t * ((1.0 - torch.exp(-2.0 * h)) / (-2.0 * h) + 1.0)) * d1
            + (alpha_t * ((1.0 - torch.exp(-2.0 * h) + (-2.0 * h)) / (-2.0 * h) ** 2 - 0.5)) * d2
        )
    return x_t + sigma_t * torch.sqrt(1.0 - torch.exp(-2 * h)) * noise


class DPMSolverSinglestepScheduler(ExponentialIntegratorScheduler):
    """Singlestep DPM-Solver++ (orders 1-3) and its SDE variant, diffusers' `DPMSolverSinglestepScheduler`.

    Config keys and defaults are diffusers' (this class has no `timestep_spacing`: timesteps are always
    'linspace'). `lower_order_final` is forced on, as diffusers does, when `num_inference_steps` is not a
    multiple of `solver_order` or the final sigma is 'zero' (the default); unlike diffusers the config is not
    rewritten, so the forcing is decided afresh at every `set_timesteps`. diffusers' deprecated noise-prediction
    'dpmsolver' runs too (:mod:`.dpm_noise`; with final_sigmas_type 'sigma_min', as there). Not implemented
    (ValueError): the flow-matching / learned-variance options (:func:`.multistep.reject_unsupported`).
    """

    defaults = dict(
        num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", trained_betas=None,
        solver_order=2, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=False,
        use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False,
        final_sigmas_type="zero", lambda_min_clipped=-float("inf"), variance_type=None,
    )
    # diffusers' singlestep class has no 'sde-dpmsolver'
    choices = {**DPMSolverMultistepScheduler.choices,
               "algorithm_type": ("dpmsolver++", "sde-dpmsolver++", "dpmsolver")}
    option_aliases = DPMSolverMultistepScheduler.option_aliases  # as diffusers maps other solvers' names

    def __init__(self, **config):
        super().__init__(**config)
        # solver order of each step; as diffusers, over every training timestep until set_timesteps
        self.order_list = self._orders(self.config.num_train_timesteps, self.config.lower_order_final)

    def _validate(self, values: dict) -> None:
        super()._validate(values)
        check_noise_prediction_config(type(self).__name__, values)

    def _orders(self, num_steps: int, lower_order_final: bool) -> list[int]:
        """:func:`singlestep_orders`, the last step first-order when the schedule lands on sigma 0."""
        orders = singlestep_orders(num_steps, self.config.solver_order, lower_order_final)
        if self.config.final_sigmas_type == "zero":
            orders[-1] = 1  # landing on sigma 0 needs a first-order last step
        return orders

    def _reset_history(self) -> None:
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.sample: torch.Tensor | None = None  # the sample at the start of the current group

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Timesteps (int64, descending, on `device`), sigmas (float32 CPU, plus the final sigma), step orders.

        Exactly one of `num_inference_steps` or `timesteps` (custom training timesteps, cast to int64, their
        sigmas interpolated; not with a respacing flag), as diffusers checks them. `mu`: UnsupportedOptionError
        (flow-matching dynamic shifting; diffusers fails an assert).
        """
        reject_mu(mu)
        c = self.config
        check_schedule_args(num_inference_steps, timesteps, respacing_flag=respacing_flag(self.own_config))
        if timesteps is not None:
            timesteps, sigmas = self._custom_schedule(timesteps)
            num_inference_steps = len(timesteps)
        else:
            last_timestep = lambda_clipped_last_timestep(self.alphas_cumprod, c.lambda_min_clipped)
            timesteps, sigmas = self._spaced_schedule(num_inference_steps, last_timestep=last_timestep)
        sigma_last = 0 if c.final_sigmas_type == "zero" else self._training_sigma_min()
        self._set_schedule(timesteps, sigmas, sigma_last, device)
        lower_order_final = (
            c.lower_order_final or num_inference_steps % c.solver_order != 0 or c.final_sigmas_type == "zero"
        )
        self.order_list = self._orders(num_inference_steps, lower_order_final)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ):
        """One step of the current group (see the module docstring).

        model_output, sample: (b, c, f, h, w). `generator` seeds the noise of 'sde-dpmsolver++'. Returns
        SchedulerOutput(prev_sample, pred_original_sample=the data prediction x0 at `timestep`) or that tuple.
        """
        i = self._start_step(timestep)
        c = self.config
        x0 = data_prediction(model_output, sample, self.sigmas[i], c)
        eps_form = c.algorithm_type == "dpmsolver"  # DPM-Solver: the history holds eps
        held = noise_prediction(model_output, sample, self.sigmas[i], c) if eps_form else x0
        self.model_outputs = [*self.model_outputs[1:], held]  # oldest first
        noise = None
        if c.algorithm_type == "sde-dpmsolver++":
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)

        order = self.order_list[i]
        while self.model_outputs[-order] is None:  # a schedule entered mid-group (video-to-video) starts at order 1
            order -= 1
        if order == 1:
            self.sample = sample
        sigma_next = self.sigmas[i + 1]
        first, second = ((dpm_solver_first_order, dpm_solver_second_order) if eps_form
                         else (dpm_solver_pp_first_order, dpm_solver_pp_second_order))
        if order == 1:
            prev = first(self.sample, held, self.sigmas[i], sigma_next, noise)
        elif order == 2:
            start = self.model_outputs[-2]
            sigmas = (self.sigmas[i - 1], self.sigmas[i])
            prev = second(self.sample, start, held, *sigmas, sigma_next, c.solver_type, noise)
        else:
            sigmas = (self.sigmas[i - 2], self.sigmas[i - 1], self.sigmas[i])
            held3 = tuple(self.model_outputs[-3:])
            if eps_form:
                prev = dpm_solver_3s(self.sample, held3, sigmas, sigma_next, c.solver_type)
            else:
                prev = dpm_solver_pp_3s(self.sample, held3, sigmas, sigma_next, c.solver_type, noise)
        self._step_index += 1
        return self._output(prev, x0, return_dict)


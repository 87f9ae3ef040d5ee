"""Heun's second-order sampler on the discrete sigma schedule (Karras et al. 2022, Algorithm 1)."""
from __future__ import annotations

import torch

from .schedules import check_schedule_args
from .sigmas import SigmaScheduler, sigma_predict_x0, sigma_spacing


def heun_correct(start: torch.Tensor, first_derivative: torch.Tensor, predicted: torch.Tensor,
                 x0_predicted: torch.Tensor, sigma_next: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Heun's correction (Karras et al. 2022, Alg. 1 lines 9-11): average the slope at the start
    of the step with the slope (x - x0) / sigma_next at the Euler prediction ``predicted`` (where
    the model gave ``x0_predicted``) and redo the step of size dt from ``start``."""
    derivative = (first_derivative + (predicted - x0_predicted) / sigma_next) / 2
    return start + derivative * dt


class HeunDiscreteScheduler(SigmaScheduler):
    """Heun sampler: two model evaluations per step (an Euler predictor, then a trapezoid
    corrector), so ``timesteps`` lists every timestep but the first twice and ``order`` is 2.

    Config keys and defaults are diffusers' ``HeunDiscreteScheduler``'s (note its default betas
    0.00085..0.012), including Karras / exponential / beta sigma spacing and ``clip_sample``.
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", use_karras_sigmas=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, clip_sample=False, clip_sample_range=1.0,
                    timestep_spacing="linspace", steps_offset=0)
    choices = {**SigmaScheduler.choices, "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "exp")}
    order = 2

    def __init__(self, **config):
        super().__init__(**config)
        # as diffusers: the initial schedule is every training timestep, Heun-doubled (num_inference_steps = T)
        self.set_timesteps(self.config.num_train_timesteps, None, self.config.num_train_timesteps)

    def _reset(self) -> None:
        self.prev_derivative: torch.Tensor | None = None  # slope at the start of the current step
        self.dt: torch.Tensor | None = None  # sigma_next - sigma of the current step
        self.sample: torch.Tensor | None = None  # the current step's starting sample

    @property
    def state_in_first_order(self) -> bool:
        """True when the next ``step`` is a predictor (first) evaluation."""
        return self.dt is None

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
                      num_train_timesteps: int | None = None, timesteps: list[float] | None = None) -> None:
        """Timesteps [t0, t1, t1, t2, t2, ...] (float32) and sigmas [s0, s1, s1, ..., 0].

        Exactly one of ``num_inference_steps`` or ``timesteps`` (custom training timesteps, descending; not
        with use_*_sigmas), as diffusers checks them. ``num_train_timesteps`` (default: the config's) is the
        range the steps are spaced over, not the training schedule, as in diffusers.
        """
        check_schedule_args(num_inference_steps, timesteps, respacing_flag=self._respacing_flag())
        spacing = sigma_spacing(self.config) if timesteps is None else None
        self._set_sigma_schedule(num_inference_steps, device, spacing, timesteps=timesteps,
                                 num_train_timesteps=num_train_timesteps)
        sigmas, timesteps = self.sigmas, self.timesteps
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        self._reset()

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """Predictor (Euler) or corrector (trapezoid) stage, alternating. Shapes (b, c, f, h, w).
        Deterministic: ``generator`` is accepted (the pipeline passes it to every scheduler), unused."""
        i = self._start_step(timestep)
        first = self.state_in_first_order
        if first:
            sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        else:  # 2nd order / Heun's method: the model was evaluated at the predicted point
            sigma, sigma_next = self.sigmas[i - 1], self.sigmas[i]
        c = self.config
        x0 = sigma_predict_x0(model_output, sample, sigma if first else sigma_next, c.prediction_type)
        if c.clip_sample:
            x0 = x0.clamp(-c.clip_sample_range, c.clip_sample_range)
        if first:  # Euler predictor; remember where it started
            derivative = (sample - x0) / sigma
            dt = sigma_next - sigma
            self.prev_derivative, self.dt, self.sample = derivative, dt, sample
            prev_sample = sample + derivative * dt
        else:
            prev_sample = heun_correct(self.sample, self.prev_derivative, sample, x0, sigma_next, self.dt)
            self._reset()
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

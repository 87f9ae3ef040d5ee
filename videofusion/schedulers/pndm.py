"""PNDM: pseudo numerical methods for diffusion models (Liu, Ren, Lin & Zhao 2022, ICLR).

A Runge-Kutta warm-up (PRK, 3 steps of 4 model calls) followed by linear multistep (PLMS) steps,
both built on the DDIM-like "transfer" function phi. With ``skip_prk_steps=True`` (the usual
latent-diffusion setting, ModelScope's config) the warm-up is replaced by lower-order PLMS steps.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import Scheduler
from .schedules import check_num_inference_steps


def pndm_transfer(sample: torch.Tensor, eps: torch.Tensor, alpha_prod_t: torch.Tensor,
                  alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """The transfer phi(x_t, eps, t, t-delta) of Liu et al. 2022, eq. 11 (a DDIM step written to be
    numerically stable): sqrt(abar_prev / abar_t) x_t - (abar_prev - abar_t) eps /
    (abar_t sqrt(1 - abar_prev) + sqrt(abar_t (1 - abar_t) abar_prev))."""
    beta_prod_t = 1 - alpha_prod_t
    sample_coeff = (alpha_prod_prev / alpha_prod_t) ** 0.5
    denom = alpha_prod_t * (1 - alpha_prod_prev) ** 0.5 + (alpha_prod_t * beta_prod_t * alpha_prod_prev) ** 0.5
    return sample_coeff * sample - (alpha_prod_prev - alpha_prod_t) * eps / denom


def plms_eps(ets: list[torch.Tensor]) -> torch.Tensor:
    """Adams-Bashforth combination of the last 1-4 noise predictions (Liu et al. 2022, eq. 12 and
    its lower-order warm-up), newest last in ``ets``."""
    if len(ets) == 1:
        return ets[-1]
    if len(ets) == 2:
        return (3 * ets[-1] - ets[-2]) / 2
    if len(ets) == 3:
        return (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
    return 1 / 24 * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])


class PNDMScheduler(Scheduler):
    """PNDM / PLMS sampler. Config keys and defaults are diffusers' ``PNDMScheduler``'s.

    Deterministic; ``step`` must be called once per entry of ``timesteps``, in order (the schedule
    repeats timesteps: PRK evaluates the model 4 times per step, PLMS twice at the first step).
    Supports prediction_type "epsilon" and "v_prediction".
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, skip_prk_steps=False, set_alpha_to_one=False, prediction_type="epsilon",
                    timestep_spacing="leading", steps_offset=0)
    choices = {**Scheduler.choices, "prediction_type": ("epsilon", "v_prediction")}
    pndm_order = 4
    step_returns_x0 = False  # diffusers' step / step_prk / step_plms return (prev_sample,)

    def __init__(self, **config):
        super().__init__(**config)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        # the two parts of ``timesteps`` (int64 numpy), as diffusers names them; None until set_timesteps
        self.prk_timesteps: np.ndarray | None = None  # Runge-Kutta warm-up (empty with skip_prk_steps)
        self.plms_timesteps: np.ndarray | None = None  # linear multistep
        self._reset()

    def _reset(self) -> None:
        self.ets: list[torch.Tensor] = []  # past noise predictions, newest last
        self.counter = 0  # number of step() calls since set_timesteps
        self.cur_model_output = 0  # running RK4 combination during PRK
        self.cur_sample: torch.Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Integer timesteps (int64): the PRK part (if any) then the PLMS part, as diffusers builds them.

        Unlike the other schedulers the base grid is ascending here and ``linspace`` is rounded;
        ``len(timesteps)`` is num_inference_steps + 1 with skip_prk_steps, more without.
        """
        c = self.config
        T, n = c.num_train_timesteps, num_inference_steps
        check_num_inference_steps(n, T)
        if not c.skip_prk_steps and n < self.pndm_order:
            raise ValueError(f"PNDMScheduler with skip_prk_steps=False needs num_inference_steps >= {self.pndm_order} "
                             f"(its Runge-Kutta warm-up), got {n}; use skip_prk_steps=True for fewer steps")
        self.num_inference_steps = n
        if c.timestep_spacing == "linspace":
            grid = np.linspace(0, T - 1, n).round().astype(np.int64)
        elif c.timestep_spacing == "leading":
            grid = np.arange(0, n) * (T // n) + c.steps_offset
        else:  # trailing
            grid = np.round(np.arange(T, 0, -T / n))[::-1].astype(np.int64) - 1
        if c.skip_prk_steps:
            # the first PLMS step is taken twice (predict, then correct with the averaged eps)
            self.prk_timesteps = np.array([], dtype=np.int64)
            self.plms_timesteps = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1].copy()
        else:
            half = T // n // 2
            prk = np.array(grid[-self.pndm_order:]).repeat(2) + np.tile(np.array([0, half]), self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            self.plms_timesteps = grid[:-3][::-1].copy()
        self.timesteps = torch.from_numpy(
            np.concatenate([self.prk_timesteps, self.plms_timesteps]).astype(np.int64)).to(device)
        self._reset()

    def _transfer(self, sample, timestep, prev_timestep, model_output):
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        if self.config.prediction_type == "v_prediction":  # v -> eps
            model_output = alpha_prod_t ** 0.5 * model_output + (1 - alpha_prod_t) ** 0.5 * sample
        return pndm_transfer(sample, model_output, alpha_prod_t, alpha_prod_prev)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One PRK or PLMS stage at ``timestep`` (the current entry of ``timesteps``): :meth:`step_prk` during
        the Runge-Kutta warm-up, else :meth:`step_plms`, as diffusers dispatches. Deterministic:
        ``generator`` is accepted (the pipeline passes it to every scheduler) and not used.

        Returns SchedulerOutput(prev_sample, pred_original_sample=None) or the 1-tuple (prev_sample,).
        """
        self._require_timesteps()
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict=return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict=return_dict)

    def step_prk(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                 return_dict: bool = True):
        """One stage of the Runge-Kutta warm-up (Liu et al. 2022, eq. 13): 4 model calls per step, at t,
        t-d/2, t-d/2, t-d. model_output, sample: (b, c, f, h, w). Returns SchedulerOutput(prev_sample) or
        (prev_sample,); ValueError before ``set_timesteps``."""
        self._require_timesteps()
        diff_to_prev = 0 if self.counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2
        prev_timestep = timestep - diff_to_prev
        timestep = self.prk_timesteps[self.counter // 4 * 4]
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        prev_sample = self._transfer(cur_sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return self._output(prev_sample, None, return_dict)

    def step_plms(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
                  return_dict: bool = True):
        """One linear multistep stage (Liu et al. 2022, eq. 12); with skip_prk_steps the first step is a
        predictor-corrector pair on the same timestep. model_output, sample: (b, c, f, h, w). Returns
        SchedulerOutput(prev_sample) or (prev_sample,); ValueError before ``set_timesteps`` or, without
        skip_prk_steps, before the 12 Runge-Kutta stages."""
        self._require_timesteps()
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler: PLMS steps need the 3 PRK warm-up steps (12 step_prk calls) first; "
                             "call step once per entry of timesteps, in order")
        step = self.config.num_train_timesteps // self.num_inference_steps
        prev_timestep = timestep - step
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # second call: correct the first step, from the same starting point
            prev_timestep = timestep
            timestep = timestep + step
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        else:
            model_output = plms_eps(self.ets)
        prev_sample = self._transfer(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return self._output(prev_sample, None, return_dict)

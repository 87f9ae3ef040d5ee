"""Euler and Euler-ancestral samplers on the discrete sigma schedule (Karras et al. 2022; k-diffusion)."""
from __future__ import annotations

import numpy as np
import torch

from ..noise import randn
from .base import (Scheduler, check_num_inference_steps, discrete_sigmas, sigma_spacing,
                   spaced_timesteps)


def sigma_predict_x0(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """x0 from the model output at noise level sigma, for x = x0 + sigma * eps (the model saw
    x / sqrt(sigma^2 + 1)): eps -> x - sigma eps; v -> -sigma / sqrt(sigma^2+1) v + x / (sigma^2+1)."""
    if prediction_type == "epsilon":
        return sample - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got {prediction_type!r}")


def euler_step(sample: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the probability-flow ODE dx/dsigma = (x - x0) / sigma from sigma to
    sigma_next (Karras et al. 2022, Algorithm 2 without churn)."""
    derivative = (sample - x0) / sigma
    return sample + derivative * (sigma_next - sigma)


def ancestral_sigmas(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up) for an ancestral step (k-diffusion ``get_ancestral_step``, eta=1):
    step deterministically down to sigma_down, then add noise of std sigma_up so the marginal
    matches sigma_to."""
    sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _sigma_timesteps(scheduler: Scheduler, num_inference_steps: int) -> np.ndarray:
    """The float32 inference timesteps of the k-diffusion-style schedulers (Euler, Euler a, Heun,
    LMS): diffusers' ``linspace`` keeps fractional timesteps here (no rounding)."""
    c = scheduler.config
    check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
    t = spaced_timesteps(c.num_train_timesteps, num_inference_steps, c.timestep_spacing, c.steps_offset)
    return t.astype(np.float32)


class EulerDiscreteScheduler(Scheduler):
    """Euler sampler (Karras et al. 2022, Algorithm 2; optional churn s_churn adds noise).

    Config keys and defaults are diffusers' ``EulerDiscreteScheduler``'s: Karras / exponential /
    beta sigma spacing, sigma_min/sigma_max for them, ``final_sigmas_type`` ("zero" or
    "sigma_min"), ``timestep_type`` "continuous" (timesteps 0.25 log sigma, for v-prediction
    models trained so), ``interpolation_type`` "linear" / "log_linear".
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", interpolation_type="linear",
                    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False, sigma_min=None,
                    sigma_max=None, timestep_spacing="linspace", timestep_type="discrete", steps_offset=0,
                    rescale_betas_zero_snr=False, final_sigmas_type="zero")
    choices = {**Scheduler.choices, "interpolation_type": ("linear", "log_linear"),
               "timestep_type": ("discrete", "continuous"), "final_sigmas_type": ("zero", "sigma_min")}

    def __init__(self, **config):
        super().__init__(**config)
        sigma_spacing(self.config)  # validates the use_*_sigmas flags
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # close to 0 without an infinite sigma (diffusers' choice)
        self._init_training_sigmas()

    init_noise_sigma = property(Scheduler._sigma_init_noise_sigma)
    scale_model_input = Scheduler._sigma_scale_model_input
    add_noise = Scheduler._sigma_add_noise

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Float32 timesteps (fractional for linspace / Karras) and their sigmas (+ a final one)."""
        c = self.config
        timesteps = _sigma_timesteps(self, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        sigmas, timesteps = discrete_sigmas(self.alphas_cumprod, timesteps, sigma_spacing(c), c.sigma_min,
                                            c.sigma_max, c.interpolation_type)
        if c.final_sigmas_type == "sigma_min":
            sigma_last = (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()
        else:
            sigma_last = 0.0
        sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        if c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            self.timesteps = torch.Tensor([0.25 * s.log() for s in sigmas[:-1]]).to(device=device)
        else:
            self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)
        self.sigmas = sigmas  # kept on the CPU: indexed by python ints every step
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One Euler step from the current sigma to the next. With ``s_churn`` > 0 (Karras et al.
        2022, Alg. 2) the sample is first noised up to sigma_hat = sigma (1 + gamma) for sigma in
        [s_tmin, s_tmax], with noise from ``generator`` scaled by ``s_noise``. The step is computed
        in float32 and cast back to model_output's dtype. Shapes (b, c, f, h, w)."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[self._step_index]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if self.config.prediction_type == "v_prediction":  # diffusers uses sigma, not sigma_hat, here
            x0 = sigma_predict_x0(model_output, sample, sigma, "v_prediction")
        else:
            x0 = sigma_predict_x0(model_output, sample, sigma_hat, self.config.prediction_type)
        prev_sample = euler_step(sample, x0, sigma_hat, self.sigmas[self._step_index + 1]).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)


class EulerAncestralDiscreteScheduler(Scheduler):
    """Euler ancestral sampler ("euler_a"; k-diffusion ``sample_euler_ancestral``): an Euler step
    down to sigma_down, then fresh noise of std sigma_up from ``generator``, every step.

    Config keys and defaults are diffusers' ``EulerAncestralDiscreteScheduler``'s; prediction_type
    "epsilon" or "v_prediction".
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False)
    choices = {**Scheduler.choices, "prediction_type": ("epsilon", "v_prediction")}

    def __init__(self, **config):
        super().__init__(**config)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24
        self._init_training_sigmas()

    init_noise_sigma = property(Scheduler._sigma_init_noise_sigma)
    scale_model_input = Scheduler._sigma_scale_model_input
    add_noise = Scheduler._sigma_add_noise

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Float32 timesteps (fractional for linspace) and their interpolated sigmas (+ a final 0)."""
        timesteps = _sigma_timesteps(self, num_inference_steps)
        self.num_inference_steps = num_inference_steps
        sigmas, _ = discrete_sigmas(self.alphas_cumprod, timesteps)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device)
        self._step_index = None
        self._begin_index = None

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One ancestral Euler step; draws noise shaped like model_output every step (also the last,
        where sigma_up = 0, so seeded runs match diffusers draw for draw)."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        sample = sample.to(torch.float32)
        x0 = sigma_predict_x0(model_output, sample, sigma, self.config.prediction_type)
        sigma_down, sigma_up = ancestral_sigmas(sigma, self.sigmas[self._step_index + 1])
        prev_sample = euler_step(sample, x0, sigma, sigma_down)
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

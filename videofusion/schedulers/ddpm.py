"""DDPM: ancestral sampling of denoising diffusion probabilistic models (Ho, Jain & Abbeel 2020)."""
from __future__ import annotations

import torch

from ..noise import randn
from .config import Scheduler
from .predictions import predict_x0_eps, threshold_or_clip
from .schedules import check_custom_timesteps, rounded_timesteps

VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range")


def ddpm_posterior_mean(x0: torch.Tensor, sample: torch.Tensor, alpha_prod_t: torch.Tensor,
                        alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """Mean of q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 7), with alpha_t = abar_t / abar_prev so
    that skipped timesteps work: coefficients sqrt(abar_prev) beta_t / (1 - abar_t) on x0 and
    sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t) on x_t."""
    beta_prod_t = 1 - alpha_prod_t
    current_alpha_t = alpha_prod_t / alpha_prod_prev
    current_beta_t = 1 - current_alpha_t
    x0_coeff = alpha_prod_prev ** 0.5 * current_beta_t / beta_prod_t
    sample_coeff = current_alpha_t ** 0.5 * (1 - alpha_prod_prev) / beta_prod_t
    return x0_coeff * x0 + sample_coeff * sample


def ddpm_variance(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor, variance_type: str | None,
                  predicted_variance: torch.Tensor | None = None) -> torch.Tensor:
    """The noise term of a DDPM step in the form diffusers' ``DDPMScheduler._get_variance`` returns it (Ho et
    al. 2020 sec. 3.2; learned variants: Nichol & Dhariwal 2021 eq. 15). ``fixed_small`` (and None, the value
    a DPM-Solver config carries): the posterior variance beta~_t (clamped at 1e-20); ``fixed_small_log``: its
    square root, via the log; ``fixed_large``: beta_t; ``learned``: the model's ``predicted_variance`` as given;
    ``learned_range``: the log-variance, between log beta~_t and log beta_t as the model says."""
    current_beta_t = 1 - alpha_prod_t / alpha_prod_prev
    variance = torch.clamp((1 - alpha_prod_prev) / (1 - alpha_prod_t) * current_beta_t, min=1e-20)
    if variance_type in ("fixed_small", None):
        return variance
    if variance_type == "fixed_small_log":
        return torch.exp(0.5 * torch.log(variance))
    if variance_type == "fixed_large":
        return current_beta_t
    if variance_type == "learned":
        return predicted_variance
    if variance_type == "learned_range":
        frac = (predicted_variance + 1) / 2
        return frac * torch.log(current_beta_t) + (1 - frac) * torch.log(variance)
    raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")


def ddpm_noise_scale(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor, variance_type: str | None,
                     predicted_variance: torch.Tensor | None = None) -> torch.Tensor:
    """Standard deviation of the noise a DDPM step adds, from :func:`ddpm_variance` as diffusers takes it
    (``learned``: the square root of the model's predicted variance, as in diffusers)."""
    variance = ddpm_variance(alpha_prod_t, alpha_prod_prev, variance_type, predicted_variance)
    if variance_type == "fixed_small_log":
        return variance
    if variance_type == "learned_range":
        return torch.exp(0.5 * variance)
    return variance ** 0.5


class DDPMScheduler(Scheduler):
    """DDPM ancestral sampler: every step draws fresh noise (except the last, at t = 0).

    Config keys and defaults are diffusers' ``DDPMScheduler``'s. ``variance_type`` "learned" /
    "learned_range" expect a model output with twice the sample's channels (mean, variance); None (from a
    DPM-Solver config) is "fixed_small", as in diffusers. Not accepted (ValueError), deliberately stricter than
    diffusers: "fixed_large_log" (diffusers takes the square root of a log variance: NaN noise) and unknown
    names (diffusers silently samples them as "fixed_small").
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, variance_type="fixed_small", clip_sample=True, prediction_type="epsilon",
                    thresholding=False, dynamic_thresholding_ratio=0.995, clip_sample_range=1.0,
                    sample_max_value=1.0, timestep_spacing="leading", steps_offset=0, rescale_betas_zero_snr=False)
    choices = {**Scheduler.choices, "variance_type": (*VARIANCE_TYPES, None),
               "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")}

    def __init__(self, **config):
        super().__init__(**config)
        self.custom_timesteps = False  # True after set_timesteps(timesteps=...)

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Integer timesteps (int64, descending), spaced per ``timestep_spacing`` (linspace rounded), or the
        custom ``timesteps`` (strictly descending, below num_train_timesteps; then ``num_inference_steps``
        must be None and is left as it was, as in diffusers)."""
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            custom = check_custom_timesteps(timesteps, self.config.num_train_timesteps)
            self.timesteps = torch.from_numpy(custom).to(device)
            self.custom_timesteps = True
            return
        self.timesteps = rounded_timesteps(self.config, num_inference_steps, device)
        self.num_inference_steps = num_inference_steps
        self.custom_timesteps = False

    def _require_timesteps(self) -> None:
        """Nothing to check: before ``set_timesteps`` the schedule is every training timestep, as in diffusers."""

    def _get_variance(self, t: int | torch.Tensor, predicted_variance: torch.Tensor | None = None,
                      variance_type: str | None = None) -> torch.Tensor:
        """diffusers' ``_get_variance``: :func:`ddpm_variance` at timestep ``t`` of the schedule (to the
        timestep after it), for ``variance_type`` (default: the config's)."""
        prev_t = self.previous_timestep(t)
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        return ddpm_variance(self.alphas_cumprod[t], alpha_prod_prev, variance_type or self.config.variance_type,
                             predicted_variance)

    def previous_timestep(self, timestep: int | torch.Tensor) -> torch.Tensor:
        """The timestep after ``timestep`` in the schedule, or -1 after the last one."""
        index = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
        if len(index) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        index = index[0]
        return torch.tensor(-1) if index == self.timesteps.shape[0] - 1 else self.timesteps[index + 1]

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One ancestral step x_t -> x_{t-1} ~ N(posterior mean, sigma^2); noise from ``generator``.

        model_output, sample: (b, c, f, h, w) (model_output (b, 2c, ...) for learned variances).
        """
        self._require_timesteps()
        c = self.config
        t = timestep
        prev_t = self.previous_timestep(t)
        predicted_variance = None
        if model_output.shape[1] == sample.shape[1] * 2 and c.variance_type in ("learned", "learned_range"):
            model_output, predicted_variance = torch.split(model_output, sample.shape[1], dim=1)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        x0, _ = predict_x0_eps(model_output, sample, alpha_prod_t, c.prediction_type)
        x0 = threshold_or_clip(x0, c)
        prev_sample = ddpm_posterior_mean(x0, sample, alpha_prod_t, alpha_prod_prev)
        if t > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            prev_sample = prev_sample + ddpm_noise_scale(alpha_prod_t, alpha_prod_prev, c.variance_type,
                                                         predicted_variance) * noise
        return self._output(prev_sample, x0, return_dict)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v-prediction training target at integer ``timesteps`` (b,); see ``Scheduler._velocity``."""
        return self._velocity(sample, noise, timesteps)

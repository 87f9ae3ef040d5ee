"""DDIM: denoising diffusion implicit models (Song, Meng & Ermon 2020), the ModelScope default."""
from __future__ import annotations

import torch

from ..noise import randn
from .config import Scheduler
from .predictions import predict_x0_eps, threshold_or_clip
from .schedules import rounded_timesteps


def ddim_variance(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor) -> torch.Tensor:
    """(1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev): DDPM's posterior variance between the two
    timesteps (Song et al. 2020, eq. 16 with eta=1; diffusers' ``DDIMScheduler._get_variance``)."""
    return (1 - alpha_prod_prev) / (1 - alpha_prod_t) * (1 - alpha_prod_t / alpha_prod_prev)


def ddim_sigma(alpha_prod_t: torch.Tensor, alpha_prod_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t(eta) = eta * sqrt(:func:`ddim_variance`) (Song et al. 2020, eq. 16); eta=0 is deterministic
    DDIM, eta=1 is DDPM's posterior std."""
    return eta * ddim_variance(alpha_prod_t, alpha_prod_prev) ** 0.5


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, alpha_prod_prev: torch.Tensor, std_dev_t: torch.Tensor | float,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t noise
    (Song et al. 2020, eq. 12). ``noise`` is required when sigma_t > 0."""
    prev = alpha_prod_prev ** 0.5 * x0 + (1 - alpha_prod_prev - std_dev_t ** 2) ** 0.5 * eps
    return prev if noise is None else prev + std_dev_t * noise


class DDIMScheduler(Scheduler):
    """DDIM sampler; ``eta`` in ``step`` interpolates between DDIM (0) and DDPM-like sampling (1).

    Config keys and defaults are diffusers' ``DDIMScheduler``'s. ``set_alpha_to_one`` sets the
    cumulative alpha "before" the first training step to 1 (else alphas_cumprod[0]).
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                    prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                    rescale_betas_zero_snr=False)
    accepts_eta = True

    def __init__(self, **config):
        super().__init__(**config)
        self.final_alpha_cumprod = torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Integer timesteps (int64, descending), spaced per ``timestep_spacing``; linspace rounded."""
        self.timesteps = rounded_timesteps(self.config, num_inference_steps, device)
        self.num_inference_steps = num_inference_steps

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """diffusers' ``_get_variance``: :func:`ddim_variance` from training timestep ``timestep`` to
        ``prev_timestep`` (negative: to the final alpha_cumprod)."""
        alpha_prod_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        return ddim_variance(self.alphas_cumprod[timestep], alpha_prod_prev)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float = 0.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One DDIM step from ``timestep`` to ``timestep - T // num_inference_steps``.

        model_output, sample: (b, c, f, h, w). eta >= 0 adds fresh noise drawn from ``generator``.
        Returns SchedulerOutput(prev_sample, pred_original_sample) or that tuple.
        """
        self._require_timesteps()
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        prev_timestep = timestep - self.config.num_train_timesteps // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        x0, eps = predict_x0_eps(model_output, sample, alpha_prod_t, self.config.prediction_type)
        x0 = threshold_or_clip(x0, self.config)
        std_dev_t = ddim_sigma(alpha_prod_t, alpha_prod_prev, eta)
        noise = None
        if eta > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        return self._output(ddim_step(x0, eps, alpha_prod_prev, std_dev_t, noise), x0, return_dict)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v-prediction training target at integer ``timesteps`` (b,); see ``Scheduler._velocity``."""
        return self._velocity(sample, noise, timesteps)

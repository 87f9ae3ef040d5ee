"""Euler and Euler-ancestral samplers on the discrete sigma schedule (Karras et al. 2022; k-diffusion)."""
from __future__ import annotations

import torch

from ..noise import randn
from .schedules import check_schedule_args
from .sigmas import SigmaScheduler, sigma_predict_x0, sigma_spacing


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


class EulerDiscreteScheduler(SigmaScheduler):
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
    choices = {**SigmaScheduler.choices, "interpolation_type": ("linear", "log_linear"),
               "timestep_type": ("discrete", "continuous"), "final_sigmas_type": ("zero", "sigma_min")}

    def __init__(self, **config):
        super().__init__(**config)
        if self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction":
            self.timesteps = 0.25 * self.sigmas[:-1].log()  # as diffusers' initial (training) schedule

    def set_timesteps(self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
                      timesteps: list[float] | None = None, sigmas: list[float] | None = None) -> None:
        """Float32 timesteps (fractional for linspace / Karras) and their sigmas (+ a final one).

        Exactly one of ``num_inference_steps``, ``timesteps`` (custom training timesteps, descending; their
        sigmas are interpolated, not with use_*_sigmas nor continuous v-prediction timesteps) or ``sigmas``
        (custom noise levels, n+1 with the final one; timesteps follow from them), as diffusers checks them.
        """
        c = self.config
        check_schedule_args(num_inference_steps, timesteps, sigmas, self._respacing_flag())
        if timesteps is not None and c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            raise ValueError("Cannot set `timesteps` with `config.timestep_type = 'continuous'` and "
                             "`config.prediction_type = 'v_prediction'`.")
        if sigmas is not None:
            self._custom_sigma_schedule(sigmas, device)
        else:
            if c.final_sigmas_type == "sigma_min":
                sigma_last = (((1 - self.alphas_cumprod[0]) / self.alphas_cumprod[0]) ** 0.5).item()
            else:
                sigma_last = 0.0
            spacing = None if timesteps is not None else sigma_spacing(c)
            self._set_sigma_schedule(num_inference_steps, device, spacing, sigma_last, c.interpolation_type,
                                     timesteps=timesteps)
        if c.timestep_type == "continuous" and c.prediction_type == "v_prediction":
            self.timesteps = torch.Tensor([0.25 * s.log() for s in self.sigmas[:-1]]).to(device=device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One Euler step from the current sigma to the next. With ``s_churn`` > 0 (Karras et al.
        2022, Alg. 2) the sample is first noised up to sigma_hat = sigma (1 + gamma) for sigma in
        [s_tmin, s_tmax], with noise from ``generator`` scaled by ``s_noise``. The step is computed
        in float32 and cast back to model_output's dtype. Shapes (b, c, f, h, w)."""
        i = self._start_step(timestep)
        sample = sample.to(torch.float32)
        sigma = self.sigmas[i]
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
            sample = sample + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        if self.config.prediction_type == "v_prediction":  # diffusers uses sigma, not sigma_hat, here
            x0 = sigma_predict_x0(model_output, sample, sigma, "v_prediction")
        else:
            x0 = sigma_predict_x0(model_output, sample, sigma_hat, self.config.prediction_type)
        prev_sample = euler_step(sample, x0, sigma_hat, self.sigmas[i + 1]).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler ancestral sampler ("euler_a"; k-diffusion ``sample_euler_ancestral``): an Euler step
    down to sigma_down, then fresh noise of std sigma_up from ``generator``, every step.

    Config keys and defaults are diffusers' ``EulerAncestralDiscreteScheduler``'s; prediction_type
    "epsilon" or "v_prediction".
    """

    defaults = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False)
    choices = {**SigmaScheduler.choices, "prediction_type": ("epsilon", "v_prediction")}

    def __init__(self, **config):
        super().__init__(**config)
        self.timesteps = self.timesteps.double()  # diffusers' initial (training) timesteps are float64 here

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Float32 timesteps (fractional for linspace) and their interpolated sigmas (+ a final 0)."""
        self._set_sigma_schedule(num_inference_steps, device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One ancestral Euler step; draws noise shaped like model_output every step (also the last,
        where sigma_up = 0, so seeded runs match diffusers draw for draw)."""
        i = self._start_step(timestep)
        sigma = self.sigmas[i]
        sample = sample.to(torch.float32)
        x0 = sigma_predict_x0(model_output, sample, sigma, self.config.prediction_type)
        sigma_down, sigma_up = ancestral_sigmas(sigma, self.sigmas[i + 1])
        prev_sample = euler_step(sample, x0, sigma, sigma_down)
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev_sample = (prev_sample + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        return self._output(prev_sample, x0, return_dict)

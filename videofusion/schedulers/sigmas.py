"""Noise levels sigma and what the k-diffusion-style schedulers (Euler, Euler a, Heun, LMS) share.

A training timestep t has the variance-exploding noise level sigma_t = sqrt((1 - abar_t) / abar_t)
(x_t / sqrt(abar_t) = x0 + sigma_t eps). This module converts between the two
(``sigmas_from_alphas_cumprod``, ``sigma_to_t``), respaces noise levels (Karras, exponential, beta:
``karras_sigmas`` ...; chosen by the ``use_*_sigmas`` flags, ``sigma_spacing``), builds a run's
sigmas (``discrete_sigmas``), and holds :class:`SigmaScheduler`, the base of the schedulers that
step in sigma: their model input x / sqrt(sigma^2 + 1), initial noise std, forward noising and
schedule storage. The exponential-integrator solvers reuse the respacing helpers (:mod:`.multistep`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from .config import Scheduler, _expand_to
from .schedules import check_num_inference_steps, spaced_timesteps

# ----------------------------------------------------------------------------- sigma conversions and spacings


def sigmas_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> np.ndarray:
    """Karras-style noise levels sigma_t = sqrt((1 - abar_t) / abar_t), indexed by training timestep
    (ascending in t). float32 numpy (T,)."""
    return (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).cpu().numpy()


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep whose sigma is ``sigma``: piecewise-linear interpolation in
    log-sigma over the training schedule ``log_sigmas`` (T,), as in k-diffusion's
    ``DiscreteSchedule.sigma_to_t``. Any shape in, same shape out."""
    sigma = np.asarray(sigma)
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    t = (1 - w) * low_idx + w * high_idx
    return t.reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Noise levels of Karras et al. 2022 ("Elucidating the Design Space...", eq. 5), descending
    from sigma_max to sigma_min, without the final 0. float64 numpy (num_inference_steps,)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int) -> np.ndarray:
    """Noise levels evenly spaced in log-sigma, descending, without the final 0. (num_inference_steps,)."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_inference_steps))


def beta_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, alpha: float = 0.6,
                beta: float = 0.6) -> np.ndarray:
    """Noise levels at the quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024, "Beta
    Sampling is All You Need"), descending, without the final 0. Needs scipy (optional)."""
    try:
        from scipy.stats import beta as beta_dist
    except ImportError:
        raise ImportError("use_beta_sigmas=True needs scipy: pip install scipy") from None
    ppf = beta_dist.ppf(1 - np.linspace(0, 1, num_inference_steps), alpha, beta)
    return np.array([sigma_min + p * (sigma_max - sigma_min) for p in ppf])


def sigma_spacing(config: Mapping[str, Any]) -> str | None:
    """Which of use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas is on ("karras",
    "exponential", "beta") or None; ValueError if more than one."""
    on = [k for k in ("karras", "exponential", "beta") if config.get(f"use_{k}_sigmas")]
    if len(on) > 1:
        raise ValueError("only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be True, "
                         f"got {on}")
    return on[0] if on else None


def respacing_bounds(config: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(sigma_min, sigma_max) bounding respaced (Karras / exponential / beta) noise levels; None: the
    schedule's own ends. Read from the whole config, also where the class does not own the keys (a hidden
    key from an Euler or UniPC config): diffusers' respacing reads them with ``hasattr(self.config, ...)`` in
    every class (Heun, LMS, DPM-Solver, DEIS too), so the same config gives the same noise levels."""
    return config.get("sigma_min"), config.get("sigma_max")


def discrete_sigmas(alphas_cumprod: torch.Tensor, timesteps: np.ndarray, spacing: str | None = None,
                    sigma_min: float | None = None, sigma_max: float | None = None,
                    interpolation_type: str = "linear") -> tuple[np.ndarray, np.ndarray]:
    """Noise levels for the inference ``timesteps`` (descending float32 (n,)), k-diffusion style.

    sigma(t) is interpolated linearly in t over the training sigmas (``interpolation_type``
    "log_linear": evenly in log-sigma between the extremes instead, n+1 points). ``spacing``
    "karras" / "exponential" / "beta" then respaces the sigmas between sigma_min and sigma_max
    (defaults: the ends of the interpolated schedule) and maps them back to fractional timesteps.
    Returns (sigmas float64 (n,) without the final 0 (n+1 for log_linear), timesteps (n,)).
    """
    train_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
    log_sigmas = np.log(train_sigmas)
    n = len(timesteps)
    if interpolation_type == "linear":
        sigmas = np.interp(timesteps, np.arange(0, len(train_sigmas)), train_sigmas)
    elif interpolation_type == "log_linear":
        sigmas = torch.linspace(np.log(train_sigmas[-1]), np.log(train_sigmas[0]), n + 1).exp().numpy()
    else:
        raise ValueError(f"interpolation_type must be 'linear' or 'log_linear', got {interpolation_type!r}")
    if spacing is None:
        return sigmas, timesteps
    lo = sigma_min if sigma_min is not None else sigmas[-1].item()
    hi = sigma_max if sigma_max is not None else sigmas[0].item()
    make = {"karras": karras_sigmas, "exponential": exponential_sigmas, "beta": beta_sigmas}[spacing]
    sigmas = make(lo, hi, n)
    return sigmas, np.array([sigma_to_t(s, log_sigmas) for s in sigmas])


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


# ----------------------------------------------------------------------------- the sigma-based schedulers' base


class SigmaScheduler(Scheduler, register=False):
    """Base of the schedulers that step the probability-flow ODE in sigma (Karras et al. 2022;
    k-diffusion): Euler, Euler ancestral, Heun, LMS.

    They keep ``self.sigmas`` (float32 CPU, one per entry of ``timesteps`` plus the final one) and
    ``timesteps`` (float32, fractional for linspace / respaced sigmas). ``__init__`` validates the
    ``use_*_sigmas`` flags, nudges a zero-terminal-SNR schedule's last alphas_cumprod to 2**-24
    (``rescale_betas_zero_snr``, as diffusers does, so sigma_max stays finite) and sets the training
    sigmas; ``set_timesteps`` is built from :meth:`_set_sigma_schedule`.
    """

    # the noise-level respacings bounded by the config's sigma_min / sigma_max (``respacing_bounds``), as diffusers'
    # class of the same name bounds them
    bounded_spacings: tuple[str, ...] = ("karras", "exponential", "beta")

    def __init__(self, **config: Any):
        super().__init__(**config)
        sigma_spacing(self.config)  # validates the use_*_sigmas flags
        if self.config.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2**-24  # close to 0 without an infinite sigma (diffusers' choice)
        self._init_training_sigmas()

    def _init_training_sigmas(self) -> None:
        """Before ``set_timesteps``: sigmas of all training timesteps, descending, plus a final 0, and the
        training timesteps: a full schedule ``step`` can run (``num_inference_steps`` stays None), as in diffusers."""
        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        self.sigmas = torch.cat([train_sigmas, torch.zeros(1)])
        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0, self.config.num_train_timesteps)

    def _require_timesteps(self) -> None:
        """Nothing to check: before ``set_timesteps`` the schedule is every training timestep, as in diffusers."""

    def _set_sigma_schedule(self, num_inference_steps: int | None, device: torch.device | str | None = None,
                            spacing: str | None = None, sigma_last: float = 0.0, interpolation_type: str = "linear",
                            timesteps: Any = None, num_train_timesteps: int | None = None) -> None:
        """Set ``timesteps`` (float32 on ``device``, fractions kept) and ``sigmas`` (float32 CPU:
        ``discrete_sigmas`` with ``spacing`` between ``respacing_bounds`` and ``interpolation_type``, then
        ``sigma_last``); reset the step index. The timesteps are the custom ``timesteps`` (any 1-d sequence;
        ``num_inference_steps`` becomes their count) or, after validating the step count, spaced per the
        config's ``timestep_spacing`` and ``steps_offset`` over ``num_train_timesteps`` (default: the config's;
        Heun's set_timesteps may pass another, as diffusers' does)."""
        c = self.config
        if timesteps is None:
            check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
            timesteps = spaced_timesteps(num_train_timesteps or c.num_train_timesteps, num_inference_steps,
                                         c.timestep_spacing, c.steps_offset)
        else:
            num_inference_steps = len(timesteps)
        bounds = respacing_bounds(c) if spacing in self.bounded_spacings else (None, None)
        sigmas, timesteps = discrete_sigmas(self.alphas_cumprod, np.array(timesteps).astype(np.float32), spacing,
                                            *bounds, interpolation_type)
        self._store_sigma_schedule(timesteps, np.concatenate([sigmas, [sigma_last]]), num_inference_steps, device)

    def _store_sigma_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray, num_inference_steps: int,
                              device: torch.device | str | None = None) -> None:
        """Keep a run's ``timesteps`` (float32 on ``device``, (n,)) and ``sigmas`` (float32 CPU, (n+1,) with
        the final one) and reset the step index."""
        self.sigmas = torch.from_numpy(np.asarray(sigmas).astype(np.float32))
        self.timesteps = torch.from_numpy(np.asarray(timesteps)).to(device=device, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps
        self._reset_step_index()

    def _custom_sigma_schedule(self, sigmas: Any, device: torch.device | str | None = None) -> None:
        """``set_timesteps(sigmas=...)`` as diffusers' Euler: the given noise levels (descending, the final
        one included, so n+1 of them) as float32, and the n timesteps whose training sigmas they are
        (``sigma_to_t``, fractional)."""
        sigmas = np.array(sigmas).astype(np.float32)
        log_sigmas = np.log(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        timesteps = np.array([sigma_to_t(s, log_sigmas) for s in sigmas[:-1]])
        self._store_sigma_schedule(timesteps, sigmas, len(sigmas) - 1, device)

    def _respacing_flag(self) -> str | None:
        """The use_*_sigmas flag this class owns that is on, or None (custom timesteps exclude it)."""
        spacing = sigma_spacing(self.own_config)
        return f"use_{spacing}_sigmas" if spacing else None

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Std of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for "leading" spacing
        (whose first timestep is not the last training one), as diffusers does."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): the variance-preserving input the network was trained on
        (Karras et al. 2022, c_in)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x0 + sigma(t) noise for ``timesteps`` (b,) taken from ``self.timesteps`` (or, once a
        begin index is set, the current step's sigma)."""
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        schedule = self.timesteps.to(original_samples.device)
        timesteps = timesteps.to(original_samples.device)
        if self._begin_index is None:
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            indices = [self._step_index if self._step_index is not None else self._begin_index] * timesteps.shape[0]
        return original_samples + noise * _expand_to(sigmas[indices], original_samples)

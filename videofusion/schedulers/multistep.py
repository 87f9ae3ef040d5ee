"""What the exponential-integrator solvers share: DPM-Solver++ multistep and singlestep, UniPC, DEIS.

These schedulers integrate the diffusion ODE's linear part exactly and extrapolate the model's output
over the half log-SNR lambda (log rho for DEIS): Lu et al. 2022, "DPM-Solver" / "DPM-Solver++"; Zhang &
Chen 2022, "Fast Sampling of Diffusion Models with Exponential Integrator"; Zhao et al. 2023, "UniPC".
They share their timestep grid (``multistep_timesteps``: diffusers' n+1-point spacing), their noise
levels (``inference_schedule``: interpolated, or respaced Karras / exponential / beta / uniform-lambda),
the conversions of a model output at a noise level (``predict_x0``, ``data_prediction``,
``predict_epsilon``), the order rule of the multistep warm-up (``multistep_order``), and the base class
:class:`ExponentialIntegratorScheduler` (config checks, sigma schedule storage, history reset,
``add_noise``).

Notation (as in the papers and diffusers): the class keeps the variance-exploding noise level
`sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)` per step; the variance-preserving pair is
`alpha_t = 1 / sqrt(sigma**2 + 1)`, `sigma_t = sigma * alpha_t`, and the half log-SNR is
`lambda = log(alpha_t) - log(sigma_t)`. A final sigma of 0 gives lambda = +inf, and every update
then returns the data prediction exactly.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .config import Scheduler
from .predictions import dynamic_threshold
from .schedules import check_num_inference_steps
from .sigmas import (
    beta_sigmas,
    exponential_sigmas,
    karras_sigmas,
    respacing_bounds,
    sigma_spacing,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
)

# ----------------------------------------------------------------------------------------------------
# noise-schedule helpers (numpy, run once per set_timesteps)


def multistep_timesteps(
    num_train_timesteps: int,
    num_inference_steps: int,
    spacing: str,
    steps_offset: int = 0,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Integer timesteps, descending, as the DPM-Solver family spaces them (diffusers' DPMSolverMultistep,
    UniPC and DEIS; Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Tab. 2).

    Differs from DDIM's spacing: 'linspace' rounds `linspace(0, T-1, n+1)` and drops the 0, 'leading' uses a
    step of `T // (n + 1)`, 'trailing' counts down from `last_timestep` in steps of `T / n`.
    `last_timestep` (default `num_train_timesteps`) cuts off the low-SNR end (lambda_min_clipped).
    """
    last = num_train_timesteps if last_timestep is None else last_timestep
    n = num_inference_steps
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
    if spacing == "leading":
        step_ratio = last // (n + 1)
        return (np.arange(0, n + 1) * step_ratio).round()[::-1][:-1].copy().astype(np.int64) + steps_offset
    if spacing == "trailing":
        step_ratio = num_train_timesteps / n
        return np.arange(last, 0, -step_ratio).round().copy().astype(np.int64) - 1
    raise ValueError(f"timestep_spacing must be one of 'linspace', 'leading', 'trailing', got {spacing!r}")


def lu_sigmas(log_min: float, log_max: float, num_inference_steps: int) -> np.ndarray:
    """Noise levels spaced uniformly in log sigma, i.e. in log-SNR (the step-size rule of Lu et al. 2022, DPM-Solver),
    from exp(log_max) down to exp(log_min). float64 (num_inference_steps,)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    return np.exp(log_max + ramp * (log_min - log_max))


def inference_schedule(
    alphas_cumprod: torch.Tensor,
    timesteps: np.ndarray,
    sigma_spacing: str | None = None,
    round_timesteps: bool = True,
    sigma_min: float | None = None,
    sigma_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps, sigmas) of one sampling run, without the final sigma.

    `sigma_spacing` None: the training sigmas interpolated at `timesteps`. 'karras' (Karras et al. 2022),
    'lu' (uniform log-SNR), 'exponential' (uniform log sigma) or 'beta' (Beta(0.6, 0.6) quantiles, needs
    scipy): `len(timesteps)` new noise levels between the training extremes (or `sigma_min` / `sigma_max`),
    mapped back to fractional timesteps, which are rounded for 'karras' and 'lu' when `round_timesteps`.
    Returns timesteps (n,) and float64 sigmas (n,).
    """
    sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)  # float32 (T,), ascending in t
    if sigma_spacing is None:
        return timesteps, np.interp(timesteps, np.arange(0, len(sigmas)), sigmas)
    n = len(timesteps)
    log_sigmas = np.log(sigmas)
    lo = sigmas[0].item() if sigma_min is None else sigma_min
    hi = sigmas[-1].item() if sigma_max is None else sigma_max
    if sigma_spacing == "karras":
        new_sigmas = karras_sigmas(lo, hi, n)
    elif sigma_spacing == "lu":
        new_sigmas = lu_sigmas(log_sigmas[0].item(), log_sigmas[-1].item(), n)
    elif sigma_spacing in ("exponential", "beta"):
        new_sigmas = (exponential_sigmas if sigma_spacing == "exponential" else beta_sigmas)(lo, hi, n)
        round_timesteps = False
    else:
        raise ValueError(f"sigma_spacing must be None, 'karras', 'lu', 'exponential' or 'beta', got {sigma_spacing!r}")
    new_timesteps = np.array([sigma_to_t(s, log_sigmas) for s in new_sigmas])
    return (new_timesteps.round() if round_timesteps else new_timesteps), new_sigmas


# ----------------------------------------------------------------------------------------------------
# per-step math (torch; sigmas are 0-d float32 tensors)


def vp_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VE noise level -> variance-preserving (alpha_t, sigma_t) with alpha_t**2 + sigma_t**2 = 1."""
    alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
    return alpha_t, sigma * alpha_t


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha_t / sigma_t) of a VE noise level (+inf at sigma 0)."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma)
    return torch.log(alpha_t) - torch.log(sigma_t)


def predict_x0(
    model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model's data prediction x0 at VE noise level `sigma` from an epsilon / v / sample prediction."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma)
    if prediction_type == "epsilon":
        return (sample - sigma_t * model_output) / alpha_t
    if prediction_type == "v_prediction":
        return alpha_t * sample - sigma_t * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got {prediction_type!r}")


def data_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, config: Any
) -> torch.Tensor:
    """x0 from the model output (``predict_x0``), dynamically thresholded when ``config.thresholding``."""
    x0 = predict_x0(model_output, sample, sigma, config.prediction_type)
    if config.thresholding:
        x0 = dynamic_threshold(x0, config.dynamic_thresholding_ratio, config.sample_max_value)
    return x0


def predict_epsilon(
    model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model's noise prediction at VE noise level `sigma` from an epsilon / v / sample prediction."""
    alpha_t, sigma_t = vp_alpha_sigma(sigma)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha_t * model_output + sigma_t * sample
    if prediction_type == "sample":
        return (sample - alpha_t * model_output) / sigma_t
    raise ValueError(f"prediction_type must be one of 'epsilon', 'v_prediction', 'sample', got {prediction_type!r}")


# ----------------------------------------------------------------------------------------------------
# what the four exponential-integrator classes share


def lambda_clipped_last_timestep(alphas_cumprod: torch.Tensor, lambda_min_clipped: float) -> int:
    """The training timestep the schedule starts from once the timesteps whose half log-SNR
    ``lambda = log(alpha) - log(sigma)`` lies below ``lambda_min_clipped`` are dropped (diffusers'
    searchsorted rule; ``-inf`` keeps them all)."""
    lambdas = torch.log(torch.sqrt(alphas_cumprod)) - torch.log(torch.sqrt(1 - alphas_cumprod))
    return len(alphas_cumprod) - int(torch.searchsorted(torch.flip(lambdas, [0]), lambda_min_clipped).item())


def sigma_spacing_of(config: Mapping[str, Any]) -> str | None:
    """Which noise-level spacing a config asks for: 'karras', 'exponential', 'beta', 'lu' (use_lu_lambdas) or
    None; ValueError if several (diffusers silently lets one win)."""
    spacing = sigma_spacing(config)
    if not config.get("use_lu_lambdas", False):
        return spacing
    if spacing is not None:
        raise ValueError(f"use_lu_lambdas and use_{spacing}_sigmas cannot both be True")
    return "lu"


# diffusers options for flow-matching models and learned-variance outputs, which these schedulers do not
# implement. ``use_flow_sigmas`` must be off. ``variance_type`` is DDPM's key too: diffusers' DPM-Solver acts
# only on 'learned' / 'learned_range' (keeping the first 3 channels of the model output, an RGB pixel model's
# mean), so every other value (DDPM's 'fixed_small', None) is accepted and does nothing, as there; the two
# learned values are rejected rather than cutting a latent model's output to 3 channels. (The flow options'
# companions flow_shift, use_dynamic_shifting, time_shift_type, shift_terminal do nothing without them and
# are not read.)
UNSUPPORTED_VARIANCE_TYPES = ("learned", "learned_range")


def reject_unsupported(name: str, values: Mapping[str, Any]) -> None:
    """ValueError for a diffusers option these schedulers do not implement (see UNSUPPORTED_VARIANCE_TYPES),
    rather than sampling differently."""
    if values.get("use_flow_sigmas", False):
        raise ValueError(f"{name}: use_flow_sigmas={values['use_flow_sigmas']!r} is not supported (only False)")
    if values.get("variance_type") in UNSUPPORTED_VARIANCE_TYPES:
        raise ValueError(f"{name}: variance_type={values['variance_type']!r} is not supported (a learned variance; "
                         "any other value, e.g. None or DDPM's 'fixed_small', is accepted and has no effect)")


class UnsupportedOptionError(ValueError, AssertionError):
    """An option diffusers rejects with an ``assert`` (so AssertionError there) and we with ValueError: it is
    both, so code written against either catches it."""


def reject_mu(mu: float | None) -> None:
    """``set_timesteps(mu=...)``: diffusers' DPM-Solver and DEIS assert use_dynamic_shifting (a flow-matching
    option, not implemented here) when ``mu`` is given; so do we (UnsupportedOptionError)."""
    if mu is not None:
        raise UnsupportedOptionError(f"set_timesteps(mu={mu!r}): mu is the dynamic time shift of flow-matching "
                                     "models (use_dynamic_shifting), which this scheduler does not implement")


def respacing_flag(config: Mapping[str, Any]) -> str | None:
    """The config flag that respaces the noise levels ('use_karras_sigmas', 'use_lu_lambdas', ...) or None."""
    spacing = sigma_spacing_of(config)
    if spacing is None:
        return None
    return "use_lu_lambdas" if spacing == "lu" else f"use_{spacing}_sigmas"


def multistep_order(solver_order: int, lower_order_nums: int, lower_final: bool, lower_second: bool) -> int:
    """Order of this step of a multistep solver of order <= 3 (DPM-Solver++(kM), Lu et al. 2022, Alg. 2;
    AB-DEIS): it warms up with one more past output per step (``lower_order_nums`` outputs so far), and
    drops to first order on a lowered final step (``lower_final``), to second on a lowered second-to-last
    one (``lower_second``)."""
    if solver_order == 1 or lower_order_nums < 1 or lower_final:
        return 1
    if solver_order == 2 or lower_order_nums < 2 or lower_second:
        return 2
    return 3


class ExponentialIntegratorScheduler(Scheduler, register=False):
    """Base of DPM-Solver++ (multistep and singlestep), UniPC and DEIS.

    ``option_aliases`` maps, per config key, the values other solvers' configs carry to this class's own
    (as diffusers maps them, e.g. DEIS's ``algorithm_type='deis'`` is DPM-Solver++'s 'dpmsolver++'); they are
    applied before the config is read. ``__init__`` then nudges a zero-terminal-SNR schedule's last
    alphas_cumprod to 2**-24 (``rescale_betas_zero_snr``, so the first sigma stays finite) and sets the
    training sigmas (float32 CPU (T,), ascending in t) and an empty history (``_reset_history``). Config
    checks: the unsupported options (``reject_unsupported``) and at most one noise-level spacing.
    ``step(return_dict=False)`` returns ``(prev_sample,)``, as diffusers' four classes do.
    """

    option_aliases: dict[str, dict[str, str]] = {}
    step_returns_x0 = False

    def __init__(self, **config: Any):
        for key, aliases in self.option_aliases.items():
            if isinstance(config.get(key), str) and config[key] in aliases:
                config[key] = aliases[config[key]]
        super().__init__(**config)
        if self.config.get("rescale_betas_zero_snr", False):
            self.alphas_cumprod[-1] = 2**-24  # near zero so the first sigma stays finite
        self.sigmas = torch.from_numpy(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        self.timesteps = self.timesteps.float()  # diffusers' initial (training) timesteps are float32 here
        self._reset_history()

    def _validate(self, values: dict[str, Any]) -> None:
        super()._validate(values)
        reject_unsupported(type(self).__name__, values)
        sigma_spacing_of(values)

    def _reset_history(self) -> None:
        """Forget the model outputs of earlier steps (``solver_order`` slots, oldest first)."""
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0  # past outputs available, up to solver_order

    def _spaced_schedule(
        self,
        num_inference_steps: int,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        last_timestep: int | None = None,
        **schedule_kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas without the final one) of a run: ``multistep_timesteps`` then ``inference_schedule``
        with the config's noise-level spacing between ``respacing_bounds`` (``schedule_kwargs``: round_timesteps).
        Validates the step count first."""
        check_num_inference_steps(num_inference_steps, self.config.num_train_timesteps)
        timesteps = multistep_timesteps(
            self.config.num_train_timesteps, num_inference_steps, timestep_spacing, steps_offset, last_timestep
        )
        sigma_min, sigma_max = respacing_bounds(self.config)
        return inference_schedule(
            self.alphas_cumprod, timesteps, sigma_spacing_of(self.own_config), sigma_min=sigma_min,
            sigma_max=sigma_max, **schedule_kwargs
        )

    def _custom_schedule(self, timesteps: Sequence[int] | np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, sigmas without the final one) of ``set_timesteps(timesteps=...)``: the given training
        timesteps cast to int64 (not checked, as in diffusers) and the training sigmas interpolated there."""
        return inference_schedule(self.alphas_cumprod, np.array(timesteps).astype(np.int64))

    def _set_schedule(
        self, timesteps: np.ndarray, sigmas: np.ndarray, sigma_last: float, device: torch.device | str | None
    ) -> None:
        """Store a run's schedule: timesteps (int64, descending, on `device`), sigmas (float32 CPU, with
        `sigma_last` appended), num_inference_steps; reset the history and the step index."""
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self._reset_history()
        self._reset_step_index()

    def _training_sigma_min(self) -> float:
        """The smallest training noise level (at t = 0), a final sigma of the 'sigma_min' kind."""
        return float(sigmas_from_alphas_cumprod(self.alphas_cumprod)[0])

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion alpha_t * x0 + sigma_t * noise at the inference schedule's noise levels, as diffusers'
        DPM-Solver family does: the sigma at each timestep's position in `self.timesteps`, or at begin_index /
        step_index once the pipeline set one (video-to-video). Before set_timesteps: the training schedule.
        timesteps: (b,); returns the shape and dtype of `original_samples`."""
        if self.num_inference_steps is None:
            return super().add_noise(original_samples, noise, timesteps)
        sigmas = self.sigmas.to(device=original_samples.device, dtype=original_samples.dtype)
        timesteps = timesteps.to(original_samples.device).reshape(-1)
        if self.begin_index is None:
            schedule = self.timesteps.to(original_samples.device)
            indices = [self.index_for_timestep(t, schedule) for t in timesteps]
        else:
            indices = [self.begin_index if self.step_index is None else self.step_index] * timesteps.shape[0]
        sigma = sigmas[indices].reshape(-1, *([1] * (original_samples.ndim - 1)))  # (b, 1, 1, 1, 1)
        alpha_t, sigma_t = vp_alpha_sigma(sigma)
        return alpha_t * original_samples + sigma_t * noise

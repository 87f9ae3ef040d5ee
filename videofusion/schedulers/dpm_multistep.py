"""DPM-Solver++ multistep sampler (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Alg. 2), its SDE variant, and the noise-schedule helpers shared by the
exponential-integrator schedulers (dpm_singlestep, unipc, deis).

Notation (as in the papers and diffusers): the class keeps the variance-exploding noise level
`sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod)` per step; the variance-preserving pair is
`alpha_t = 1 / sqrt(sigma**2 + 1)`, `sigma_t = sigma * alpha_t`, and the half log-SNR is
`lambda = log(alpha_t) - log(sigma_t)`. A final sigma of 0 gives lambda = +inf, and every update below
then returns the data prediction exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..noise import randn
from .base import (
    Scheduler,
    beta_sigmas,
    check_num_inference_steps,
    dynamic_threshold,
    exponential_sigmas,
    karras_sigmas,
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


def data_prediction(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, config) -> torch.Tensor:
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


# ----------------------------------------------------------------------------------------------------
# helpers the four exponential-integrator classes share


def lambda_clipped_last_timestep(alphas_cumprod: torch.Tensor, lambda_min_clipped: float) -> int:
    """The training timestep the schedule starts from once the timesteps whose half log-SNR
    ``lambda = log(alpha) - log(sigma)`` lies below ``lambda_min_clipped`` are dropped (diffusers'
    searchsorted rule; ``-inf`` keeps them all)."""
    lambdas = torch.log(torch.sqrt(alphas_cumprod)) - torch.log(torch.sqrt(1 - alphas_cumprod))
    return len(alphas_cumprod) - int(torch.searchsorted(torch.flip(lambdas, [0]), lambda_min_clipped).item())


def sigma_spacing_of(config) -> str | None:
    """Which noise-level spacing a config asks for: 'karras', 'exponential', 'beta', 'lu' (use_lu_lambdas) or
    None; ValueError if several (diffusers silently lets one win)."""
    spacing = sigma_spacing(config)
    if not config.get("use_lu_lambdas", False):
        return spacing
    if spacing is not None:
        raise ValueError(f"use_lu_lambdas and use_{spacing}_sigmas cannot both be True")
    return "lu"


# diffusers options for flow-matching models and learned-variance outputs, which these schedulers do not
# implement: the key is read (so a config asking for it fails loudly) and accepts this one value only.
# (Their companions flow_shift, use_dynamic_shifting, time_shift_type, shift_terminal do nothing without
# them and are not read.)
UNSUPPORTED = {"use_flow_sigmas": False, "variance_type": None}


def reject_unsupported(name: str, values: dict) -> None:
    """ValueError for a diffusers option in UNSUPPORTED set to another value, rather than sampling differently."""
    for key, only in UNSUPPORTED.items():
        if values.get(key, only) != only:
            raise ValueError(f"{name}: {key}={values[key]!r} is not supported (only {only!r})")


def schedule_add_noise(
    self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """Forward diffusion alpha_t * x0 + sigma_t * noise at the inference schedule's noise levels, as diffusers'
    DPM-Solver family does: the sigma at each timestep's position in `self.timesteps`, or at begin_index /
    step_index once the pipeline set one (video-to-video). Before set_timesteps: the training schedule.
    timesteps: (b,); returns the shape and dtype of `original_samples`. Used as the classes' `add_noise`."""
    if self.num_inference_steps is None:
        return Scheduler.add_noise(self, original_samples, noise, timesteps)
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


# ----------------------------------------------------------------------------------------------------


class DPMSolverMultistepScheduler(Scheduler):
    """DPM-Solver++ (2M by default; orders 1-3) and its SDE variant, diffusers' `DPMSolverMultistepScheduler`.

    Config keys and defaults are diffusers'. `algorithm_type` 'dpmsolver++' (ODE) or 'sde-dpmsolver++'
    (stochastic: `step` draws noise from `generator`); `solver_type` 'midpoint' or 'heun'; `lower_order_final`
    drops to first/second order on the last steps when there are fewer than 15; `euler_at_final` always takes a
    first-order last step; `final_sigmas_type` 'zero' (the last step lands on x0, first order) or 'sigma_min';
    `use_karras_sigmas` / `use_exponential_sigmas` / `use_beta_sigmas` / `use_lu_lambdas` respace the noise
    levels; `lambda_min_clipped` cuts the low-SNR end (for squaredcos_cap_v2). Not implemented (ValueError):
    the deprecated noise-prediction 'dpmsolver' / 'sde-dpmsolver', and the UNSUPPORTED flow-matching and
    learned-variance options.
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
        **Scheduler.choices, "solver_order": (1, 2, 3), "algorithm_type": ("dpmsolver++", "sde-dpmsolver++"),
        "solver_type": ("midpoint", "heun"), "final_sigmas_type": ("zero", "sigma_min"),
    }

    def __init__(self, **config):
        # names other solvers' configs carry, mapped as diffusers maps them (DEIS -> DPM-Solver++, UniPC's B(h))
        if config.get("algorithm_type") == "deis":
            config["algorithm_type"] = "dpmsolver++"
        if config.get("solver_type") in ("logrho", "bh1", "bh2"):
            config["solver_type"] = "midpoint"
        super().__init__(**config)
        if self.config.rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2**-24  # near zero so the first sigma stays finite
        self.sigmas = torch.from_numpy(sigmas_from_alphas_cumprod(self.alphas_cumprod))
        self.model_outputs: list[torch.Tensor | None] = [None] * self.config.solver_order
        self.lower_order_nums = 0

    def _validate(self, values: dict) -> None:
        super()._validate(values)
        reject_unsupported(type(self).__name__, values)
        sigma_spacing_of(values)

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        """Timesteps (int64, descending, on `device`) and sigmas (float32 CPU, one more: the final sigma)."""
        c = self.config
        check_num_inference_steps(num_inference_steps, c.num_train_timesteps)
        timesteps = multistep_timesteps(
            c.num_train_timesteps, num_inference_steps, c.timestep_spacing, c.steps_offset,
            last_timestep=lambda_clipped_last_timestep(self.alphas_cumprod, c.lambda_min_clipped),
        )
        timesteps, sigmas = inference_schedule(
            self.alphas_cumprod, timesteps, sigma_spacing_of(c), round_timesteps=c.beta_schedule != "squaredcos_cap_v2"
        )
        sigma_last = 0 if c.final_sigmas_type == "zero" else sigmas_from_alphas_cumprod(self.alphas_cumprod)[0]
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [sigma_last]]).astype(np.float32))
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.num_inference_steps = len(timesteps)
        self.model_outputs = [None] * c.solver_order
        self.lower_order_nums = 0
        self._step_index = None
        self._begin_index = None

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
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        c, i, n = self.config, self._step_index, len(self.timesteps)
        # lower orders at the end stabilise few-step sampling; a final sigma of 0 needs a first-order last step
        lower_final = i == n - 1 and (
            c.euler_at_final or (c.lower_order_final and n < 15) or c.final_sigmas_type == "zero"
        )
        lower_second = i == n - 2 and c.lower_order_final and n < 15

        x0 = data_prediction(model_output, sample, self.sigmas[self._step_index], self.config)
        self.model_outputs = [*self.model_outputs[1:], x0]  # oldest first
        sample = sample.to(torch.float32)
        noise = None
        if c.algorithm_type == "sde-dpmsolver++":
            noise = randn(model_output.shape, generator, model_output.device, torch.float32)

        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        if c.solver_order == 1 or self.lower_order_nums < 1 or lower_final:
            prev = dpm_solver_pp_first_order(sample, x0, sigma, sigma_next, noise)
        elif c.solver_order == 2 or self.lower_order_nums < 2 or lower_second:
            prev = dpm_solver_pp_second_order(
                sample, x0, self.model_outputs[-2], sigma, self.sigmas[i - 1], sigma_next, c.solver_type, noise
            )
        else:
            x0s = (x0, self.model_outputs[-2], self.model_outputs[-3])
            prev = dpm_solver_pp_3m(sample, x0s, (sigma, self.sigmas[i - 1], self.sigmas[i - 2]), sigma_next, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, c.solver_order)
        self._step_index += 1
        return self._output(prev.to(model_output.dtype), x0, return_dict)

    add_noise = schedule_add_noise

"""What every scheduler shares: config handling, noise schedules, timestep spacing, output type.

A scheduler is a thin class around pure functions. It holds its config (a diffusers
``scheduler_config.json`` dict) and its state (timesteps, sigmas, model-output history); the step
math lives in module-level functions of tensors in each algorithm's file.

A subclass declares ``defaults`` (every config key it reads, with diffusers' default value for the
class of the same name), overrides ``__init__`` (calling ``super().__init__(**config)`` first),
``set_timesteps`` and ``step``, and joins the registry behind :attr:`Scheduler.compatibles`
automatically.

Config semantics follow diffusers' ``ConfigMixin`` so that schedulers swap both ways:

* ``Scheduler(**config)``: keys the class does not read are ignored; keys it reads but were not
  given take the class defaults and are listed in ``config["_use_default_values"]``.
* ``from_config(config)``: keys listed in ``config["_use_default_values"]`` are dropped (so
  ``DPMSolverMultistepScheduler.from_config(ddim.config)`` uses DPM's own default for a key the
  checkpoint never set); keys the class does not read are kept in ``.config`` untouched ("hidden"
  keys), so ``DDIMScheduler.from_config(Euler.from_config(ddim.config).config)`` gets
  ``clip_sample`` etc. back.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

CONFIG_NAME = "scheduler_config.json"
DIFFUSERS_VERSION = "0.42.1"

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

_REGISTRY: list[type["Scheduler"]] = []


class SchedulerConfig(dict):
    """A read-only dict with attribute access (``cfg.beta_start``), like diffusers' ``FrozenDict``.

    Pass it (or any mapping) to a scheduler's ``from_config``; change values by passing overrides:
    ``DDIMScheduler.from_config(cfg, timestep_spacing="trailing")``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"scheduler config has no key {name!r}") from None

    def _read_only(self, *args, **kwargs):
        raise TypeError("SchedulerConfig is read-only; use Scheduler.from_config(config, key=value) instead")

    __setattr__ = __setitem__ = __delitem__ = _read_only
    pop = popitem = update = setdefault = clear = _read_only

    def __reduce__(self):  # keep pickling/deepcopy working despite the read-only dict methods
        return (SchedulerConfig, (dict(self),))


@dataclass
class SchedulerOutput:
    """Result of ``Scheduler.step``.

    prev_sample: the sample at the next (less noisy) timestep, same shape as the input sample.
    pred_original_sample: the model's estimate of the clean sample x_0 (None where the algorithm
    does not form one).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None

    def to_tuple(self) -> tuple:
        return (self.prev_sample, self.pred_original_sample)


# ----------------------------------------------------------------------------- noise schedules

def betas_for_alpha_bar(num_train_timesteps: int, alpha_transform_type: str = "cosine",
                        max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous alpha_bar(t), t in [0, 1] (Nichol & Dhariwal 2021, eq. 17).

    ``cosine`` is the improved-DDPM cosine schedule ("squaredcos_cap_v2"); ``exp`` and ``laplace``
    are the variants diffusers offers. Betas are capped at ``max_beta``. Returns float32 (T,).
    """
    if alpha_transform_type == "cosine":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    elif alpha_transform_type == "exp":
        def alpha_bar(t):
            return math.exp(t * -12.0)
    elif alpha_transform_type == "laplace":
        def alpha_bar(t):
            lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
            snr = math.exp(lmb)
            return math.sqrt(snr / (1 + snr))
    else:
        raise ValueError("alpha_transform_type must be one of 'cosine', 'exp', 'laplace', "
                         f"got {alpha_transform_type!r}")
    n = num_train_timesteps
    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(betas, dtype=torch.float32)


def make_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float,
               trained_betas: Sequence[float] | None = None) -> torch.Tensor:
    """The training noise schedule beta_1..beta_T as float32 (T,), computed as diffusers does.

    ``linear``: evenly spaced betas (Ho et al. 2020); ``scaled_linear``: evenly spaced sqrt(beta),
    squared (latent diffusion / Stable Diffusion, ModelScope); ``squaredcos_cap_v2``: cosine
    alpha_bar; ``exp`` / ``laplace``: alpha_bar variants; ``sigmoid``: GeoDiff. ``trained_betas``
    (a list or array) overrides all of them.
    """
    if trained_betas is not None:
        return torch.tensor(np.asarray(trained_betas), dtype=torch.float32)
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":
        return betas_for_alpha_bar(num_train_timesteps, "cosine")
    if beta_schedule in ("exp", "laplace"):
        return betas_for_alpha_bar(num_train_timesteps, beta_schedule)
    if beta_schedule == "sigmoid":
        return torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start) + beta_start
    raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES + ('exp', 'laplace', 'sigmoid')}, "
                     f"got {beta_schedule!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale betas so the last timestep has zero SNR (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Algorithm 1). Shape (T,) in and out."""
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas


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


# ----------------------------------------------------------------------------- timesteps

def check_num_inference_steps(num_inference_steps: int, num_train_timesteps: int) -> None:
    """ValueError unless 1 <= num_inference_steps <= num_train_timesteps (an int)."""
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
    if not 1 <= num_inference_steps <= num_train_timesteps:
        raise ValueError(f"num_inference_steps must be between 1 and num_train_timesteps={num_train_timesteps}, "
                         f"got {num_inference_steps}")


def rounded_timesteps(config, num_inference_steps: int, device=None) -> torch.Tensor:
    """The DDPM-family schedule: ``spaced_timesteps`` per the config's spacing and offset, rounded to
    int64 (descending) on ``device``; validates the step count first."""
    check_num_inference_steps(num_inference_steps, config.num_train_timesteps)
    t = spaced_timesteps(config.num_train_timesteps, num_inference_steps, config.timestep_spacing,
                         config.steps_offset)
    return torch.from_numpy(np.round(t).astype(np.int64)).to(device)


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: str,
                     steps_offset: int = 0) -> np.ndarray:
    """Descending inference timesteps as float64 numpy, as diffusers' schedulers space them
    (Lin et al. 2023, Table 2):

    * ``linspace``: ``num_inference_steps`` points evenly covering [0, T-1], NOT rounded here:
      DDIM/DDPM round them (``np.round(...).astype(np.int64)``), Euler/Heun/LMS keep the fractions.
    * ``leading``: ``arange(n) * (T // n) + steps_offset`` (integers).
    * ``trailing``: ``round(arange(T, 0, -T / n)) - 1`` (integers; ends at T-1).

    Schedulers whose diffusers variant differs (DPM-Solver's ``linspace`` of n+1 points, PNDM's
    PRK doubling) say so in their own ``set_timesteps``.
    """
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, n)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.float64) + steps_offset
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / n)).astype(np.float64) - 1
    raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, got {spacing!r}")


# ----------------------------------------------------------------------------- noise

def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3): per sample, s = the ``ratio``
    quantile of |x0| clamped to [1, max_value]; x0 is clipped to [-s, s] and divided by s.
    Computed in float32 (quantile needs it), returned in x0's dtype. Any shape (b, ...)."""
    dtype = x0.dtype
    b = x0.shape[0]
    flat = x0.reshape(b, -1)  # (b, c*f*h*w)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # (b, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def _expand_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b,) -> (b, 1, 1, ...) with as many dims as ``like``."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


# ----------------------------------------------------------------------------- the base class

class Scheduler:
    """Base of every scheduler: config in and out, training noise schedule, shared interface.

    Attributes: ``config`` (SchedulerConfig), ``betas`` / ``alphas`` / ``alphas_cumprod`` (float32
    (T,)), ``timesteps`` (tensor, descending), ``num_inference_steps`` (None until
    ``set_timesteps``), ``init_noise_sigma`` (std of the initial noise).
    """

    defaults: dict[str, Any] = {}  # every config key the class reads -> diffusers' default for that class
    choices: dict[str, tuple] = {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES,
                                 "timestep_spacing": TIMESTEP_SPACINGS}
    order: int = 1
    accepts_eta: bool = False  # True where step() takes eta (DDIM); the pipeline passes eta only then
    init_noise_sigma: float = 1.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY.append(cls)

    def __init__(self, **config: Any):
        values = {k: _plain(config[k]) if k in config else _plain(v) for k, v in self.defaults.items()}
        self._validate(values)
        used_defaults = sorted(k for k in self.defaults if k not in config)
        meta = {"_class_name": type(self).__name__}
        if used_defaults:
            meta["_use_default_values"] = used_defaults
        self.config = SchedulerConfig({**meta, **values})

        c = self.config
        if "beta_schedule" in self.defaults:
            betas = make_betas(c.beta_schedule, c.num_train_timesteps, c.beta_start, c.beta_end,
                               c.get("trained_betas"))
            if c.get("rescale_betas_zero_snr", False):
                betas = rescale_zero_terminal_snr(betas)
            self.betas = betas
            self.alphas = 1.0 - betas
            self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.from_numpy(np.arange(0, c.num_train_timesteps)[::-1].copy().astype(np.int64))
        self._step_index: int | None = None
        self._begin_index: int | None = None

    def _validate(self, values: dict[str, Any]) -> None:
        for key, accepted in self.choices.items():
            if key in values and values[key] not in accepted:
                raise ValueError(f"{type(self).__name__}: {key} must be one of {list(accepted)}, got {values[key]!r}")
        n = values.get("num_train_timesteps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {n!r}")
        tb = values.get("trained_betas")
        if tb is not None and len(tb) != n:
            raise ValueError(f"trained_betas has {len(tb)} values but num_train_timesteps is {n}")

    # --------------------------------------------------------------- config in and out

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **overrides: Any) -> "Scheduler":
        """Build from a diffusers scheduler config dict (ours, diffusers' FrozenDict or a parsed
        ``scheduler_config.json``), possibly another scheduler's. ``overrides`` must be keys this
        class reads (TypeError otherwise) and win over ``config``."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (e.g. scheduler.config), got {type(config).__name__}")
        unknown = sorted(set(overrides) - set(cls.defaults))
        if unknown:
            raise TypeError(f"{cls.__name__}.from_config got unknown config keys {unknown}; "
                            f"accepted: {sorted(cls.defaults)}")
        used_defaults = set(config.get("_use_default_values", ()))
        source = {k: v for k, v in config.items() if k not in used_defaults and k != "_use_default_values"}
        init = {k: source[k] for k in cls.defaults if k in source}
        init.update(overrides)
        scheduler = cls(**init)
        hidden = {k: v for k, v in source.items() if k not in init}
        hidden.pop("_class_name", None)
        if hidden:
            scheduler.config = SchedulerConfig({**scheduler.config, **hidden})
        return scheduler

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None) -> "Scheduler":
        """Load ``<path>/<subfolder>/scheduler_config.json``. A path that is not a local folder is
        resolved as a Hub id by :func:`videofusion.io.loading.resolve_pretrained`."""
        root = Path(path)
        if not root.is_dir():
            from videofusion.io.loading import resolve_pretrained  # lazy: hub machinery only when needed

            root = Path(resolve_pretrained(str(path), subfolder=subfolder))
        folder = root / subfolder if subfolder else root
        file = folder / CONFIG_NAME
        if not file.is_file():
            there = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (it holds {there})")
        with open(file, encoding="utf-8") as f:
            return cls.from_config(json.load(f))

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``scheduler_config.json`` (atomically) into ``save_directory``, in the format diffusers
        reads (``_class_name``, ``_diffusers_version``, sorted keys). Returns the file's path."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in self.config.items() if k != "_use_default_values"}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_VERSION
        text = json.dumps(data, indent=2, sort_keys=True) + "\n"
        target = folder / CONFIG_NAME
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".scheduler_config.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a config file is meant to be shared
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target

    @property
    def compatibles(self) -> list[type["Scheduler"]]:
        """Every scheduler class: any of them can be built from this one's config."""
        return list(_REGISTRY)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({json.dumps(dict(self.config), sort_keys=True)})"

    # --------------------------------------------------------------- shared interface

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """The model's input at ``timestep``: unchanged here; sigma-based schedulers divide by
        sqrt(sigma^2 + 1)."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: torch.device | str | None = None) -> None:
        raise NotImplementedError

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, **kwargs):
        raise NotImplementedError

    def _require_timesteps(self) -> None:
        if self.num_inference_steps is None:
            raise ValueError(f"{type(self).__name__}.step called before set_timesteps(num_inference_steps)")

    def _output(self, prev_sample: torch.Tensor, pred_original_sample: torch.Tensor | None, return_dict: bool):
        if return_dict:
            return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
        return (prev_sample, pred_original_sample)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward diffusion q(x_t | x_0): sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, with
        ``timesteps`` (b,) integer training timesteps. Same shape and dtype as ``original_samples``."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=original_samples.device)
        abar = self.alphas_cumprod.to(dtype=original_samples.dtype)[timesteps.to(original_samples.device)]
        return _expand_to(abar**0.5, original_samples) * original_samples + \
            _expand_to((1 - abar) ** 0.5, original_samples) * noise

    def _velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, "Progressive
        Distillation", sec. 4), the v-prediction training target. Exposed as ``get_velocity`` by the
        DDPM family."""
        self.alphas_cumprod = self.alphas_cumprod.to(device=sample.device)
        abar = self.alphas_cumprod.to(dtype=sample.dtype)[timesteps.to(sample.device)]
        return _expand_to(abar**0.5, sample) * noise - _expand_to((1 - abar) ** 0.5, sample) * sample

    # --------------------------------------------------------------- sigma-based schedulers (Euler, Heun, LMS)
    # They keep ``self.sigmas`` (float32 CPU, one per entry of ``timesteps`` plus the final one) and
    # alias these as their ``scale_model_input`` / ``add_noise`` / ``init_noise_sigma``.

    def _init_training_sigmas(self) -> None:
        """Before ``set_timesteps``: sigmas of all training timesteps, descending, plus a final 0."""
        train_sigmas = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).flip(0)
        self.sigmas = torch.cat([train_sigmas, torch.zeros(1)])
        self.timesteps = torch.linspace(self.config.num_train_timesteps - 1, 0, self.config.num_train_timesteps)

    def _sigma_scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / sqrt(sigma^2 + 1): the variance-preserving input the network was trained on
        (Karras et al. 2022, c_in)."""
        if self._step_index is None:
            self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return sample / ((sigma**2 + 1) ** 0.5)

    def _sigma_init_noise_sigma(self) -> torch.Tensor:
        """Std of the initial noise: sigma_max, or sqrt(sigma_max^2 + 1) for "leading" spacing
        (whose first timestep is not the last training one), as diffusers does."""
        max_sigma = self.sigmas.max()
        if self.config.timestep_spacing in ("linspace", "trailing"):
            return max_sigma
        return (max_sigma**2 + 1) ** 0.5

    def _sigma_add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor,
                         timesteps: torch.Tensor) -> torch.Tensor:
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

    # --------------------------------------------------------------- step index (sigma-based schedulers)

    @property
    def step_index(self) -> int | None:
        """Index into the schedule of the current step; set on the first ``step`` call."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """Index of the first step, set by the pipeline for partial schedules (video-to-video)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = begin_index

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule_timesteps: torch.Tensor | None = None) -> int:
        """Position of ``timestep`` in the schedule; of two matches the second (diffusers' rule, so a
        schedule started mid-way does not skip a sigma)."""
        schedule = self.timesteps if schedule_timesteps is None else schedule_timesteps
        indices = (schedule == timestep).nonzero()
        if len(indices) == 0:
            raise ValueError(f"timestep {timestep} is not in this scheduler's timesteps")
        return indices[1 if len(indices) > 1 else 0].item()

    def _init_step_index(self, timestep: float | torch.Tensor) -> None:
        if self._begin_index is None:
            if isinstance(timestep, torch.Tensor):
                timestep = timestep.to(self.timesteps.device)
            self._step_index = self.index_for_timestep(timestep)
        else:
            self._step_index = self._begin_index


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config value: arrays and tuples become lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

"""The scheduler base class: config in and out, training noise schedule, step bookkeeping.

A scheduler is a thin class around pure functions. It holds its config (a diffusers
``scheduler_config.json`` dict, :class:`SchedulerConfig`) and its state (timesteps, sigmas,
model-output history); the step math lives in module-level functions of tensors in each
algorithm's file, and what a family shares in :mod:`.sigmas` (Euler, Euler a, Heun, LMS) or
:mod:`.multistep` (DPM-Solver++, UniPC, DEIS).

A subclass declares ``defaults`` (every config key it reads, with diffusers' default value for the
class of the same name), overrides ``__init__`` (calling ``super().__init__(**config)`` first),
``set_timesteps`` and ``step``, and joins the registry behind :attr:`Scheduler.compatibles`
automatically (family base classes opt out with ``register=False``).

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
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..io.files import DIFFUSERS_VERSION
from ..outputs import Output
from ..io.hub import resolve_pretrained
from .schedules import BETA_SCHEDULES, TIMESTEP_SPACINGS, make_betas, rescale_zero_terminal_snr

CONFIG_NAME = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

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
class SchedulerOutput(Output):
    """Result of ``Scheduler.step``.

    prev_sample: the sample at the next (less noisy) timestep, same shape as the input sample.
    pred_original_sample: the model's estimate of the clean sample x_0 (None where the algorithm
    does not form one).
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _expand_to(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(b,) -> (b, 1, 1, ...) with as many dims as ``like``."""
    values = values.flatten()
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


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

    def __init_subclass__(cls, register: bool = True, **kwargs):
        """Every scheduler class joins :attr:`compatibles`; a family's shared base passes ``register=False``."""
        super().__init_subclass__(**kwargs)
        if register:
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
        resolved as a Hub id by :func:`videofusion.io.hub.resolve_pretrained`."""
        root = Path(path)
        if not root.is_dir():
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

    # --------------------------------------------------------------- step index (sigma-based and solver schedulers)

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

    def _start_step(self, timestep: float | torch.Tensor) -> int:
        """The head of ``step`` for schedulers that track a step index: ValueError before
        ``set_timesteps``; on the first step, the index of ``timestep`` (or ``begin_index``).
        Returns the current step index."""
        self._require_timesteps()
        if self._step_index is None:
            self._init_step_index(timestep)
        return self._step_index

    def _reset_step_index(self) -> None:
        """Forget the step and begin index (a new schedule starts at its first timestep)."""
        self._step_index = None
        self._begin_index = None


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config value: arrays and tuples become lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

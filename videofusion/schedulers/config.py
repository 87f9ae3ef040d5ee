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

* ``Scheduler(**config)``: keys the class does not read are ignored (with a warning, unless private
  ``_name`` keys; diffusers raises TypeError there, see ``__init__``); keys it reads but were not
  given take the class defaults and are listed in ``config["_use_default_values"]``.
* ``from_config(config, **overrides)``: keys listed in ``config["_use_default_values"]`` are dropped
  (so ``DPMSolverMultistepScheduler.from_config(ddim.config)`` uses DPM's own default for a key the
  checkpoint never set); keys the class does not read are kept in ``.config`` untouched ("hidden"
  keys), so ``DDIMScheduler.from_config(Euler.from_config(ddim.config).config)`` gets
  ``clip_sample`` etc. back. A class acts only on the keys it owns (``defaults``; optional reads go
  through :attr:`Scheduler.own_config`), with the one exception diffusers makes too: respaced noise
  levels are bounded by ``sigma_min`` / ``sigma_max`` even as hidden keys (:func:`.sigmas.respacing_bounds`).
  Overrides that are not keys of the class are ignored with a warning (diffusers ignores them silently).
* ``load_config`` / ``save_config`` / ``from_pretrained`` / ``save_pretrained`` read and write
  ``scheduler_config.json`` as diffusers' ``ConfigMixin`` does.
"""
from __future__ import annotations

import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..io.files import DIFFUSERS_VERSION, read_json
from ..io.hub import resolve_pretrained
from ..io.saving import atomic_write_text
from ..outputs import Output
from .schedules import BETA_SCHEDULES, TIMESTEP_SPACINGS, make_betas, rescale_zero_terminal_snr

CONFIG_NAME = "scheduler_config.json"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# load_config's Hub options: the ones resolve_pretrained takes, and the ones diffusers takes that do not apply here
# (the token comes from the environment / huggingface-cli login; downloads are never forced)
_HUB_KWARGS = ("cache_dir", "revision", "local_files_only")
_IGNORED_HUB_KWARGS = ("force_download", "proxies", "token", "mirror", "user_agent", "local_dir",
                       "local_dir_use_symlinks", "resume_download")

_REGISTRY: list[type["Scheduler"]] = []
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


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

    config_name = CONFIG_NAME
    defaults: dict[str, Any] = {}  # every config key the class reads -> diffusers' default for that class
    choices: dict[str, tuple] = {"beta_schedule": BETA_SCHEDULES, "prediction_type": PREDICTION_TYPES,
                                 "timestep_spacing": TIMESTEP_SPACINGS}
    order: int = 1
    accepts_eta: bool = False  # True where step() takes eta (DDIM); the pipeline passes eta only then
    # step(return_dict=False) returns (prev_sample, pred_original_sample) where diffusers' class of the same
    # name does, else (prev_sample,)
    step_returns_x0: bool = True
    init_noise_sigma: float = 1.0
    _deprecated_kwargs: list[str] = []  # diffusers' attribute (its deprecated __init__ kwargs): none here

    def __init_subclass__(cls, register: bool = True, **kwargs):
        """Every scheduler class joins :attr:`compatibles`; a family's shared base passes ``register=False``."""
        super().__init_subclass__(**kwargs)
        if register:
            _REGISTRY.append(cls)

    def __init__(self, **config: Any):
        """``config``: the class's keys (``defaults``). Private keys (``_diffusers_version``... of a json
        passed as ``**json``) are kept in ``.config``, as diffusers keeps them. Other keys are ignored with a
        warning: deliberately laxer than diffusers (TypeError there), as we do not read every option
        diffusers' class takes (e.g. flow-matching ``flow_shift``), so rejecting unknown keys would reject
        calls that work in diffusers."""
        unknown = sorted(k for k in config if k not in self.defaults and not k.startswith("_"))
        if unknown:
            _warn(f"{type(self).__name__}: ignoring {unknown}, which are not config keys of this class")
        values = {k: _plain(config[k]) if k in config else _plain(v) for k, v in self.defaults.items()}
        self._validate(values)
        used_defaults = sorted(k for k in self.defaults if k not in config)
        private = {k: v for k, v in config.items() if k.startswith("_") and k != "_use_default_values"}
        meta = {**private, "_class_name": type(self).__name__}
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

    def register_to_config(self, **kwargs: Any) -> None:
        """Set config keys, as diffusers' ``ConfigMixin.register_to_config``: ``kwargs`` replace or add keys of
        ``.config`` (keys of other classes too, e.g. ``skip_prk_steps`` on any scheduler: kept as hidden keys).
        Only the config changes: the new values act from the next ``set_timesteps`` on where that reads them
        (the training noise schedule is not rebuilt, as in diffusers). Values of this class's keys are
        checked as in ``__init__`` (ValueError); a key set here is no longer listed in ``_use_default_values``."""
        values = {k: _plain(v) for k, v in kwargs.items()}
        self._validate({k: values.get(k, self.config[k]) for k in self.defaults})
        config = {**self.config, **values}
        used_defaults = [k for k in config.get("_use_default_values", ()) if k not in values]
        config.pop("_use_default_values", None)
        if used_defaults:
            config["_use_default_values"] = used_defaults
        self.config = SchedulerConfig(config)

    def __getattr__(self, name: str) -> Any:
        """A config key read as an attribute (``scheduler.num_train_timesteps``): works with a FutureWarning, as
        diffusers has deprecated it; read ``scheduler.config.<key>`` instead."""
        config = self.__dict__.get("config")
        if config is not None and name in config and not name.startswith("_"):
            warnings.warn(f"reading config key {name!r} as an attribute of {type(self).__name__} is deprecated in "
                          f"diffusers; use scheduler.config.{name}", FutureWarning, stacklevel=2)
            return config[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def own_config(self) -> SchedulerConfig:
        """The config keys this class owns (``defaults``), without the hidden keys kept for other classes.
        Optional reads (``.get``) go through this, so another class's key (e.g. DPM-Solver's
        ``use_lu_lambdas`` in UniPC's config) never acts here, as in diffusers (whose exception, the respacing
        bounds, is :func:`.sigmas.respacing_bounds`)."""
        return SchedulerConfig({k: self.config[k] for k in self.defaults})

    # --------------------------------------------------------------- config in and out

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None, return_unused_kwargs: bool = False,
                    **kwargs: Any) -> "Scheduler" | tuple["Scheduler", dict[str, Any]]:
        """Build from a diffusers scheduler config dict (ours, diffusers' FrozenDict or a parsed
        ``scheduler_config.json``), possibly another scheduler's.

        ``kwargs`` that are keys of this class win over ``config``; others are ignored with a warning
        (diffusers ignores them silently). With ``return_unused_kwargs`` returns ``(scheduler, unused)``,
        ``unused`` being the ignored kwargs plus the config's keys this class does not read, as diffusers.
        """
        if config is None:
            raise ValueError("Please make sure to provide a config as the first positional argument.")
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (e.g. scheduler.config), got {type(config).__name__}; "
                            f"to read a file or folder use {cls.__name__}.from_pretrained")
        unknown = {k: v for k, v in kwargs.items() if k not in cls.defaults}
        if unknown:
            _warn(f"{cls.__name__}.from_config: ignoring {sorted(unknown)}, which are not config keys of this "
                  f"class (accepted: {sorted(cls.defaults)})")
        used_defaults = set(config.get("_use_default_values", ()))
        source = {k: v for k, v in config.items() if k not in used_defaults and k != "_use_default_values"}
        init = {k: source[k] for k in cls.defaults if k in source}
        init.update({k: v for k, v in kwargs.items() if k in cls.defaults})
        scheduler = cls(**init)
        hidden = {k: v for k, v in source.items() if k not in init}
        hidden.pop("_class_name", None)
        if hidden:
            scheduler.config = SchedulerConfig({**scheduler.config, **hidden})
        if return_unused_kwargs:
            return scheduler, {**unknown, **hidden}
        return scheduler

    @classmethod
    def load_config(cls, pretrained_model_name_or_path: str | os.PathLike | Mapping[str, Any],
                    return_unused_kwargs: bool = False, return_commit_hash: bool = False,
                    **kwargs: Any) -> dict[str, Any] | tuple:
        """The ``scheduler_config.json`` dict of a folder (``<path>/<subfolder>``, else ``<path>``, as
        diffusers looks), a json file, a Hub id (``subfolder``, ``cache_dir``, ``revision``,
        ``local_files_only``; diffusers' other Hub options are accepted and ignored) or a mapping (copied).

        As diffusers' ``ConfigMixin.load_config``: returns the dict, or ``(dict, unused_kwargs)`` /
        ``(dict, commit_hash)`` / ``(dict, unused_kwargs, commit_hash)`` per the two flags. OSError
        (FileNotFoundError) when there is no config, OSError for a file that is not a JSON object.
        """
        subfolder = kwargs.pop("subfolder", None)
        hub = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        for k in _IGNORED_HUB_KWARGS:
            kwargs.pop(k, None)
        file = None
        if isinstance(pretrained_model_name_or_path, Mapping):
            config = dict(pretrained_model_name_or_path)
        else:
            file = _config_file(pretrained_model_name_or_path, subfolder, cls.config_name, hub)
            try:
                config = read_json(file.parent, file.name)
            except ValueError as e:  # diffusers: EnvironmentError for a file that is not JSON
                raise OSError(f"It looks like the config file at '{file}' is not a valid JSON file: {e}") from None
        if not (return_unused_kwargs or return_commit_hash):
            return config
        outputs: tuple = (config,)
        if return_unused_kwargs:
            outputs += (kwargs,)
        if return_commit_hash:
            outputs += (_commit_hash(file),)
        return outputs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None,
                        return_unused_kwargs: bool = False, **kwargs: Any):
        """Load ``<path>/<subfolder>/scheduler_config.json`` (:meth:`load_config`; a path that is not a
        local folder or file is a Hub id, see :func:`videofusion.io.hub.resolve_pretrained`). Other
        ``kwargs`` override config keys, as in diffusers (``from_pretrained(path, timestep_spacing=...)``)."""
        config, kwargs = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, return_unused_kwargs=True,
                                         **kwargs)
        return cls.from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    def to_json_string(self) -> str:
        """The ``scheduler_config.json`` text diffusers writes: the config with ``_class_name`` and
        ``_diffusers_version``, sorted keys, without ``_use_default_values``."""
        data = {k: v for k, v in self.config.items() if k != "_use_default_values"}
        data["_class_name"] = type(self).__name__
        data["_diffusers_version"] = DIFFUSERS_VERSION
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Path:
        """Write ``scheduler_config.json`` (atomically) into ``save_directory`` (created if missing), in the
        format diffusers reads (:meth:`to_json_string`). Returns the file's path. As diffusers:
        AssertionError when ``save_directory`` is a file. ``push_to_hub=True`` is not supported
        (NotImplementedError: upload the folder with ``huggingface_hub``); other ``kwargs`` (its options)
        are ignored."""
        if push_to_hub:
            raise NotImplementedError("push_to_hub is not supported: save the folder, then upload it with "
                                      "huggingface_hub.upload_folder")
        if os.path.isfile(save_directory):
            raise AssertionError(f"Provided path ({save_directory}) should be a directory, not a file")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.config_name
        atomic_write_text(target, self.to_json_string())
        # as diffusers, the in-memory config now names the version written too (a reloaded config equals it)
        self.config = SchedulerConfig({**self.config, "_diffusers_version": DIFFUSERS_VERSION})
        return target

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> Path:
        """Save the config (a scheduler has no weights): :meth:`save_config`."""
        return self.save_config(save_directory, push_to_hub=push_to_hub, **kwargs)

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
        """``step``'s result: SchedulerOutput, or the tuple diffusers' class returns (``step_returns_x0``)."""
        if return_dict:
            return SchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
        return (prev_sample, pred_original_sample) if self.step_returns_x0 else (prev_sample,)

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

    def index_for_timestep(self, timestep: float | torch.Tensor,
                           schedule_timesteps: torch.Tensor | None = None) -> int:
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


def _warn(message: str) -> None:
    """A UserWarning attributed to the first caller outside this package (the user's line)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _config_file(path: str | os.PathLike, subfolder: str | None, name: str, hub: dict[str, Any]) -> Path:
    """Where ``load_config`` reads: ``path`` itself if a file; in a local folder ``path/subfolder/name``, else
    ``path/name`` (diffusers' order); else ``path`` is a Hub id, resolved by ``resolve_pretrained``.
    FileNotFoundError naming the folder and what it holds when the file is missing."""
    local = Path(path).expanduser()
    if local.is_file():
        return local
    if local.is_dir():
        if subfolder and (local / subfolder / name).is_file():
            return local / subfolder / name
        if (local / name).is_file():
            return local / name
        folder = local / subfolder if subfolder and (local / subfolder).is_dir() else local
    else:
        folder = Path(resolve_pretrained(str(path), subfolder=subfolder, **hub))
        folder = folder / subfolder if subfolder else folder
        if (folder / name).is_file():
            return folder / name
    there = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(f"no {name} in {folder} (it holds {there})")


def _commit_hash(file: Path | None) -> str | None:
    """The Hub commit of a file in the Hub cache (``.../snapshots/<40 hex>/...``), else None (as diffusers)."""
    found = re.search(r"snapshots/([0-9a-f]{40})/", file.as_posix()) if file is not None else None
    return found.group(1) if found else None


def _plain(value: Any) -> Any:
    """JSON-ready copy of a config value: arrays and tuples become lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

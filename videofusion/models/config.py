"""The one base class of our models: config dataclass in, diffusers-format folder in and out.

A model class sets two class attributes and takes its config dataclass in ``__init__``::

    @dataclass
    class VAEConfig: ...                      # every diffusers config.json key, diffusers' defaults

    class AutoencoderKL(PretrainedModel):
        config_class = VAEConfig
        def __init__(self, config: VAEConfig | None = None, **kwargs): ...

``from_config`` / ``from_pretrained`` / ``save_pretrained`` come from here and delegate the file
work to :mod:`videofusion.io.loading`, so the model files hold only math.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io.files import DIFFUSERS_VERSION, MissingWeightsError, component_folder, read_json
from ..io.hub import resolve_pretrained
from ..io.loading import load_model
from ..io.saving import atomic_write_text, save_model


class ModelConfig(Mapping):
    """Base of the models' config dataclasses: fields read as attributes (``config.block_out_channels``) and,
    as diffusers' ``FrozenDict`` is, as a read-only mapping (``config["block_out_channels"]``,
    ``dict(config)``, ``for key in config``, ``config.get(key)``)."""

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __getattr__(self, name: str) -> Any:
        """Only reached for names that are not fields: the extra keys ``register_to_config`` added."""
        extra = self.__dict__.get("_extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__} has no key {name!r}")

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self)) + tuple(self.__dict__.get("_extra", ()))


def config_from_dict(config_class: type, values: Mapping[str, Any] | None = None, **overrides: Any):
    """Build a config dataclass from a diffusers ``config.json`` dict.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) and keys the dataclass
    does not know are ignored, as diffusers does; missing keys take the dataclass defaults
    (which are diffusers' defaults). Lists stay lists, so ``to_dict`` round-trips to JSON.
    """
    if isinstance(values, config_class):
        values = dataclasses.asdict(values)
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - names)
    if unknown:  # diffusers warns and ignores them too
        warnings.warn(f"{config_class.__name__}: ignoring {unknown}, which are not config keys", stacklevel=4)
    merged = {**(dict(values) if values else {}), **overrides}
    kwargs = {k: v for k, v in merged.items() if k in names}
    return config_class(**kwargs)


def resolve_dtype(dtype: torch.dtype | Any | None, torch_dtype: torch.dtype | Any | None) -> Any:
    """``from_pretrained``'s dtype: ``dtype`` (diffusers 0.42's name) or ``torch_dtype`` (the older one, still
    documented here); giving both with different values is a ValueError naming both."""
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype}: pass one of them (dtype is the other "
                         "name of torch_dtype)")
    return dtype if dtype is not None else torch_dtype


def config_to_dict(config) -> dict:
    """The config dataclass as a plain JSON-ready dict (tuples become lists)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    values = {**dataclasses.asdict(config), **config.__dict__.get("_extra", {})}  # + register_to_config's keys
    return {k: plain(v) for k, v in values.items()}


class PretrainedModel(nn.Module):
    """``nn.Module`` + a config dataclass + diffusers-format loading and saving.

    Subclasses set ``config_class`` and accept ``config`` (a dataclass, a dict, or keyword
    arguments as in diffusers: ``UNet3DConditionModel(block_out_channels=(32, 64))``).
    ``self.config`` is the dataclass; its ``to_dict()`` equivalent is :func:`config_to_dict`.
    """

    config_class: type = None  # set by subclasses
    config_name = "config.json"
    weights_name = "diffusion_pytorch_model"  # + ".safetensors" / ".bin", variant inserted before the suffix
    # diffusers' ModelMixin attributes that scripts and tools read, with diffusers' values for our classes
    _supports_gradient_checkpointing: bool = False  # True where enable_gradient_checkpointing works
    _keep_in_fp32_modules: list[str] | None = None  # modules kept in float32 whatever torch_dtype: none
    _deprecated_kwargs: list[str] = []  # deprecated __init__ kwargs: none

    @classmethod
    def make_config(cls, config=None, **kwargs):
        return config_from_dict(cls.config_class, config, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs) -> "PretrainedModel":
        """A randomly initialised model from a config dict or dataclass (``kwargs`` override keys)."""
        return cls(cls.make_config(config, **kwargs))

    @classmethod
    def from_pretrained(cls, path_or_id: str, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        low_cpu_mem_usage: bool = True, dtype: torch.dtype | None = None,
                        output_loading_info: bool = False, **kwargs):
        """Load a diffusers-format model folder (or Hub id). See :func:`videofusion.io.loading.load_model`.
        ``dtype`` is ``torch_dtype``'s other name (diffusers 0.42's; ValueError for two different dtypes).
        ``low_cpu_mem_usage`` is accepted for diffusers' scripts: loading never builds random weights first,
        whatever its value. ``output_loading_info=True`` returns ``(model, info)`` as diffusers: ``info`` has
        ``missing_keys``, ``unexpected_keys``, ``mismatched_keys`` and ``error_msgs``, always empty lists
        here, as the weights load with strict key and shape checks (a mismatch is a ValueError)."""
        try:
            model = load_model(cls, path_or_id, subfolder=subfolder, torch_dtype=resolve_dtype(dtype, torch_dtype),
                               variant=variant, **kwargs)
        except MissingWeightsError as e:
            folder = Path(path_or_id, subfolder or "")
            if not folder.is_dir():
                raise
            # diffusers' wording first (it names the .bin it looked for last): scripts test for "no file named"
            raise MissingWeightsError(f"Error no file named {cls.weights_name}.bin found in directory {folder}. "
                                      f"{e}") from e
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    @classmethod
    def load_config(cls, path_or_id: str | os.PathLike, subfolder: str | None = None, **hub_kwargs: Any) -> dict:
        """The ``config.json`` dict of a model folder (or Hub id: only the config is fetched), as diffusers'
        ``load_config``; ``from_config`` builds a model from it."""
        root = resolve_pretrained(path_or_id, subfolder=subfolder, allow_patterns=[
            f"{subfolder.strip('/')}/{cls.config_name}" if subfolder else cls.config_name], **hub_kwargs)
        return read_json(component_folder(root, subfolder), cls.config_name)

    def save_config(self, save_directory: str | os.PathLike) -> None:
        """Write ``config.json`` (as :meth:`save_pretrained` does, without the weights)."""
        Path(save_directory).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(save_directory) / self.config_name,
                          json.dumps(self.config_dict(), indent=2, sort_keys=True) + "\n")

    def config_dict(self) -> dict:
        """The ``config.json`` contents: the config plus diffusers' ``_class_name`` and ``_diffusers_version``."""
        return {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION,
                **config_to_dict(self.config)}

    def save_pretrained(self, save_directory: str, variant: str | None = None,
                        safe_serialization: bool = True, max_shard_size: int | str | None = None) -> None:
        """Write ``config.json`` and the weights in diffusers' layout, every file atomically (see
        :func:`videofusion.io.saving.save_model` for ``variant``, ``safe_serialization`` and
        ``max_shard_size``); ``diffusers.<Class>.from_pretrained`` loads the folder."""
        save_model(save_directory, self.config_dict(), self.state_dict(), config_name=self.config_name,
                   weights_name=self.weights_name, variant=variant, safe_serialization=safe_serialization,
                   max_shard_size=max_shard_size)

    def register_to_config(self, **kwargs: Any) -> None:
        """Set config keys, as diffusers' ``register_to_config``: keys of the config take the new values
        (checked as when the config is built: ValueError), other keys are added (read as ``config.<key>``
        and written to ``config.json``). The layers are not rebuilt, as in diffusers."""
        names = {f.name for f in dataclasses.fields(self.config)}
        config = dataclasses.replace(self.config, **{k: v for k, v in kwargs.items() if k in names})
        extra = {**self.config.__dict__.get("_extra", {}), **{k: v for k, v in kwargs.items() if k not in names}}
        if extra:
            config._extra = extra
        self.config = config

    def __getattr__(self, name: str) -> Any:
        """Parameters, buffers and submodules as ``nn.Module``; then a config key read as an attribute
        (``unet.in_channels``), which works with a FutureWarning as diffusers has deprecated it."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            config = self.__dict__.get("config")
            if isinstance(config, Mapping) and not name.startswith("_") and name in config:
                warnings.warn(f"reading config key {name!r} as an attribute of {type(self).__name__} is deprecated "
                              f"in diffusers; use model.config.{name}", FutureWarning, stacklevel=2)
                return config[name]
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    # ---- gradient checkpointing: a flag on every submodule that has one, as diffusers sets them

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of storing them (less memory when training,
        same gradients): turns on the ``gradient_checkpointing`` flag of every submodule that has one.
        ValueError where the class does not support it (``_supports_gradient_checkpointing``)."""
        if not self._supports_gradient_checkpointing:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")
        self._set_gradient_checkpointing(True)

    def disable_gradient_checkpointing(self) -> None:
        self._set_gradient_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    def _set_gradient_checkpointing(self, enable: bool) -> None:
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing"):
                module.gradient_checkpointing = enable

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

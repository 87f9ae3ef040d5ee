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
from typing import Any, Mapping

import torch
from torch import nn

from ..io.files import DIFFUSERS_VERSION
from ..io.loading import load_model
from ..io.saving import save_model


def config_from_dict(config_class: type, values: Mapping[str, Any] | None = None, **overrides: Any):
    """Build a config dataclass from a diffusers ``config.json`` dict.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) and keys the dataclass
    does not know are ignored, as diffusers does; missing keys take the dataclass defaults
    (which are diffusers' defaults). Lists stay lists, so ``to_dict`` round-trips to JSON.
    """
    if isinstance(values, config_class):
        values = dataclasses.asdict(values)
    merged = {**(dict(values) if values else {}), **overrides}
    names = {f.name for f in dataclasses.fields(config_class)}
    kwargs = {k: v for k, v in merged.items() if k in names}
    return config_class(**kwargs)


def config_to_dict(config) -> dict:
    """The config dataclass as a plain JSON-ready dict (tuples become lists)."""
    def plain(v):
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


class PretrainedModel(nn.Module):
    """``nn.Module`` + a config dataclass + diffusers-format loading and saving.

    Subclasses set ``config_class`` and accept ``config`` (a dataclass, a dict, or keyword
    arguments as in diffusers: ``UNet3DConditionModel(block_out_channels=(32, 64))``).
    ``self.config`` is the dataclass; its ``to_dict()`` equivalent is :func:`config_to_dict`.
    """

    config_class: type = None  # set by subclasses
    config_name = "config.json"
    weights_name = "diffusion_pytorch_model"  # + ".safetensors" / ".bin", variant inserted before the suffix

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
                        **kwargs) -> "PretrainedModel":
        """Load a diffusers-format model folder (or Hub id). See :func:`videofusion.io.loading.load_model`."""
        return load_model(cls, path_or_id, subfolder=subfolder, torch_dtype=torch_dtype,
                          variant=variant, **kwargs)

    def save_pretrained(self, save_directory: str, variant: str | None = None,
                        safe_serialization: bool = True, max_shard_size: int | str | None = None) -> None:
        """Write ``config.json`` and the weights in diffusers' layout, every file atomically (see
        :func:`videofusion.io.saving.save_model` for ``variant``, ``safe_serialization`` and
        ``max_shard_size``); ``diffusers.<Class>.from_pretrained`` loads the folder."""
        config = {"_class_name": type(self).__name__, "_diffusers_version": DIFFUSERS_VERSION,
                  **config_to_dict(self.config)}
        save_model(save_directory, config, self.state_dict(), config_name=self.config_name,
                   weights_name=self.weights_name, variant=variant, safe_serialization=safe_serialization,
                   max_shard_size=max_shard_size)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

"""diffusers pipeline folders: ``model_index.json`` plus one subfolder per component.

``model_index.json`` names each component's library and class, e.g.
``"unet": ["diffusers", "UNet3DConditionModel"]``, ``"text_encoder": ["transformers", "CLIPTextModel"]``.
We dispatch on the class name, so a folder written by diffusers loads here and ours loads there.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..io.files import DIFFUSERS_VERSION, read_json, read_model_index, select_weight_files
from ..io.hub import resolve_pretrained
from ..io.saving import atomic_write_text
from ..models import AutoencoderKL, UNet3DConditionModel
from ..models.clip import CLIPTextModel
from ..models.text import load_text_encoder, load_tokenizer
from ..models.tokenizer import CLIPTokenizer
from ..schedulers import SCHEDULER_CLASSES

logger = logging.getLogger(__name__)


def _component_loaders() -> dict[str, Any]:
    def model(cls):
        return lambda folder, name, dtype, variant: cls.from_pretrained(
            str(folder), subfolder=name, torch_dtype=dtype, variant=variant)

    def scheduler(cls):
        return lambda folder, name, dtype, variant: cls.from_pretrained(str(folder), subfolder=name)

    loaders = {
        "UNet3DConditionModel": model(UNet3DConditionModel),
        "AutoencoderKL": model(AutoencoderKL),
        "CLIPTextModel": lambda folder, name, dtype, variant: load_text_encoder(
            folder, subfolder=name, torch_dtype=dtype, variant=variant),
        "CLIPTokenizer": lambda folder, name, dtype, variant: load_tokenizer(folder, subfolder=name),
        "CLIPTokenizerFast": lambda folder, name, dtype, variant: load_tokenizer(folder, subfolder=name),
    }
    for cls in SCHEDULER_CLASSES:
        loaders[cls.__name__] = scheduler(cls)
    return loaders


def load_pipeline_components(path_or_id: str, names: Iterable[str], *,
                             torch_dtype: torch.dtype | Mapping[str, torch.dtype] | None = None,
                             variant: str | None = None, cache_dir: str | None = None,
                             revision: str | None = None, local_files_only: bool | None = None,
                             low_cpu_mem_usage: bool = True, **overrides: Any) -> dict[str, Any]:
    """Load the components ``names`` of a pipeline folder or Hub id.

    ``torch_dtype``: one dtype for every model, or as in diffusers a dict per component name with an
    optional ``"default"`` (``{"unet": torch.float16, "default": torch.float32}``). ``variant``: each
    component loads that variant's weights where it has them and its plain weights otherwise; a variant
    that no component has is an error (as in diffusers). ``low_cpu_mem_usage`` is accepted for diffusers'
    scripts: loading never builds random weights first, whatever its value. ``overrides`` maps component
    names to ready objects that replace the folder's (``scheduler=DPMSolverMultistepScheduler(...)``); any
    other keyword is an error.
    """
    names = tuple(names)
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise TypeError(f"from_pretrained: unexpected keyword argument(s) {unknown}; components are "
                        f"{list(names)}, options are torch_dtype (or dtype), device_map, variant, cache_dir, "
                        "revision, local_files_only, low_cpu_mem_usage")
    dtypes = _component_dtypes(torch_dtype, names)
    folder = resolve_pretrained(path_or_id, variant=variant, cache_dir=cache_dir, revision=revision,
                                local_files_only=local_files_only)
    index = read_model_index(folder)
    loaders = _component_loaders()
    to_load = [name for name in names if name not in overrides]
    for name in to_load:
        entry = index.get(name)
        if not entry or entry[1] is None:
            raise ValueError(f"{folder}/model_index.json: component {name!r} is missing; it lists "
                             f"{sorted(k for k in index if not k.startswith('_'))}")
        if entry[1] not in loaders:
            raise ValueError(f"{folder}/model_index.json: component {name!r} has class {entry[1]!r}, which "
                             f"videofusion cannot load; supported: {sorted(loaders)}")
        if not (Path(folder) / name).is_dir():
            raise FileNotFoundError(f"{folder}: component folder {name!r} listed in model_index.json is missing")
    variants = {name: component_variant(folder, name, variant) for name in to_load}
    if variant is not None and not any(variants.values()):
        # diffusers' first sentence, which scripts test for, then ours
        raise ValueError(f"You are trying to load the model files of the `variant={variant}`, but no such modeling "
                         f"files are available. variant: no component of {folder} has weight files of variant "
                         f"{variant!r} (loading it would silently give the plain weights); drop variant= or check "
                         "its spelling")
    components = {name: overrides[name] for name in names if name in overrides}
    for name in to_load:
        components[name] = loaders[index[name][1]](folder, name, dtypes.get(name), variants[name])
        logger.info("Loaded %s as %s from `%s` subfolder of %s.", name, index[name][1], name, folder)
    return {name: components[name] for name in names}


def _component_dtypes(torch_dtype, names: tuple[str, ...]) -> dict[str, torch.dtype | None]:
    """The dtype of each component from ``torch_dtype``: one dtype, or a dict by component name with an
    optional ``"default"``."""
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        return {name: torch_dtype for name in names}
    if not isinstance(torch_dtype, Mapping):
        raise TypeError(f"torch_dtype: must be a torch.dtype such as torch.float16, or a dict of them by component "
                        f"name, got {torch_dtype!r}")
    unknown = sorted(set(torch_dtype) - set(names) - {"default"})
    bad = {k: v for k, v in torch_dtype.items() if not isinstance(v, torch.dtype)}
    if unknown or bad:
        raise TypeError(f"torch_dtype: a dict's keys must be components {list(names)} or 'default' and its values "
                        f"torch dtypes; got unknown keys {unknown}, values {bad}")
    return {name: torch_dtype.get(name, torch_dtype.get("default")) for name in names}


def native_geometry(folder: str | os.PathLike) -> tuple[int, int]:
    """``(native_size, vae_scale_factor)`` of a pipeline folder, read from its UNet and VAE configs
    without loading any weights (the same numbers as :attr:`VideoPipeline.native_size` and
    :attr:`VideoPipeline.vae_scale_factor`): front ends check sizes with them before loading."""
    vae = AutoencoderKL.make_config(read_json(Path(folder) / "vae", AutoencoderKL.config_name))
    unet = UNet3DConditionModel.make_config(read_json(Path(folder) / "unet", UNet3DConditionModel.config_name))
    return unet.sample_size * vae.scale_factor, vae.scale_factor


def component_variant(folder: str | os.PathLike, name: str, variant: str | None) -> str | None:
    """``variant`` if the component has weights of that variant, else ``None`` (its plain weights, or it
    has no weights: a tokenizer, a scheduler), as diffusers' pipelines do: a folder may ship fp16 files for
    some components only."""
    if variant is None:
        return None
    return variant if select_weight_files(os.listdir(Path(folder) / name), variant) else None


def _library_of(obj: Any) -> str:
    """The library model_index.json names for a component: our CLIP classes save transformers' folders."""
    ours = isinstance(obj, (CLIPTextModel, CLIPTokenizer))
    return "transformers" if ours or type(obj).__module__.startswith("transformers") else "diffusers"


def save_pipeline(class_name: str, components: dict[str, Any], save_directory: str | os.PathLike, *,
                  variant: str | None = None, safe_serialization: bool = True) -> None:
    """Write ``model_index.json`` and each component's subfolder; every file is written atomically."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION}
    for name, obj in components.items():
        if obj is None:
            index[name] = [None, None]
            continue
        index[name] = [_library_of(obj), type(obj).__name__]
        target = out / name
        if isinstance(obj, torch.nn.Module) and _library_of(obj) == "transformers":
            obj.save_pretrained(str(target), variant=variant)  # transformers writes safetensors only
        elif isinstance(obj, torch.nn.Module):
            obj.save_pretrained(str(target), variant=variant, safe_serialization=safe_serialization)
        else:  # tokenizer, scheduler
            obj.save_pretrained(str(target))
    atomic_write_text(out / "model_index.json", json.dumps(index, indent=2, sort_keys=True) + "\n")

"""``DiffusionPipeline.from_pretrained``: open any supported pipeline folder by its ``model_index.json``, or an
original ModelScope release folder (``configuration.json`` + the original weight files), converted in memory."""
from __future__ import annotations

import abc
import os
from typing import Any

from ..convert import is_original_release, load_release
from ..io.files import read_model_index
from ..io.hub import resolve_pretrained
from ..models.config import resolve_dtype
from ..runtime.devices import device_map_device
from ..schedulers import DDIMScheduler
from .folders import _component_dtypes
from .core import VideoPipeline
from .text_to_video import TextToVideoSDPipeline
from .video_to_video import VideoToVideoSDPipeline

PIPELINES = {"TextToVideoSDPipeline": TextToVideoSDPipeline, "VideoToVideoSDPipeline": VideoToVideoSDPipeline}


class DiffusionPipeline(abc.ABC):
    """Dispatches on ``model_index.json``'s ``_class_name``, as diffusers' ``DiffusionPipeline`` does. Every
    videofusion pipeline (a :class:`~videofusion.pipelines.core.VideoPipeline`) is registered as its virtual
    subclass, so ``isinstance(pipe, DiffusionPipeline)`` holds as in diffusers."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any):
        """Load the pipeline class named by the folder's ``model_index.json`` (see
        :meth:`TextToVideoSDPipeline.from_pretrained` for the keyword arguments). A local original release
        folder becomes a :class:`TextToVideoSDPipeline` converted in memory (see :func:`from_original_release`)."""
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) and \
                is_original_release(pretrained_model_name_or_path):
            return from_original_release(pretrained_model_name_or_path, **kwargs)
        hub = {k: kwargs[k] for k in ("variant", "cache_dir", "revision", "local_files_only") if k in kwargs}
        folder = resolve_pretrained(pretrained_model_name_or_path, **hub)
        name = read_model_index(folder).get("_class_name")
        if name not in PIPELINES:
            raise ValueError(f"{pretrained_model_name_or_path}: model_index.json names pipeline {name!r}; "
                             f"videofusion supports {sorted(PIPELINES)}")
        return PIPELINES[name].from_pretrained(str(folder), **kwargs)


DiffusionPipeline.register(VideoPipeline)


def from_original_release(folder: str | os.PathLike, *, torch_dtype=None, variant: str | None = None,
                          low_cpu_mem_usage: bool = True, cache_dir: str | None = None, revision: str | None = None,
                          local_files_only: bool | None = None, dtype=None, device_map=None,
                          **components: Any) -> TextToVideoSDPipeline:
    """A :class:`TextToVideoSDPipeline` from an original release folder, converted in memory (nothing is
    written): see :func:`videofusion.convert.load_release`. ``torch_dtype`` (or ``dtype``) and ``device_map`` as
    for diffusers folders (one dtype or a dict by component; one device); keywords named after a component
    (``tokenizer=...``, ``scheduler=...``) replace it, and its file is then not needed. The scheduler is a
    DDIMScheduler with the original diffusion's schedule and prediction. ``variant`` is an error: the release
    has one file per part. ``low_cpu_mem_usage``, ``cache_dir``, ``revision`` and ``local_files_only`` are
    accepted and change nothing for a local folder."""
    names = TextToVideoSDPipeline.component_names
    unknown = sorted(set(components) - set(names))
    if unknown:
        raise TypeError(f"from_pretrained: unexpected keyword argument(s) {unknown}; components are {list(names)}, "
                        "options are torch_dtype, dtype, device_map, variant, cache_dir, revision, local_files_only, "
                        "low_cpu_mem_usage")
    if variant is not None:
        raise ValueError(f"variant: {folder} is an original release, with one weight file per part and no "
                         f"variants, got {variant!r}; drop variant= (videofusion convert SRC DST --variant {variant} "
                         "writes a diffusers folder with one)")
    device, torch_dtype = device_map_device(device_map), resolve_dtype(dtype, torch_dtype)
    vae = components.get("vae")
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
    parts = load_release(folder, torch_dtype=_component_dtypes(torch_dtype, names),
                         tokenizer=components.get("tokenizer"), vae_scale_factor=scale,
                         skip=[n for n in components if n != "tokenizer"])
    scheduler = components.get("scheduler") or DDIMScheduler.from_config(parts.pop("scheduler_config"))
    built = {**parts, **components, "scheduler": scheduler}
    pipe = TextToVideoSDPipeline(**{name: built[name] for name in names})
    return pipe if device is None else pipe.to(device)

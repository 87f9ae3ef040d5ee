"""``DiffusionPipeline.from_pretrained``: open any supported pipeline folder by its ``model_index.json``."""
from __future__ import annotations

from typing import Any

from ..io.files import read_model_index
from ..io.hub import resolve_pretrained
from .text_to_video import TextToVideoSDPipeline
from .video_to_video import VideoToVideoSDPipeline

PIPELINES = {"TextToVideoSDPipeline": TextToVideoSDPipeline, "VideoToVideoSDPipeline": VideoToVideoSDPipeline}


class DiffusionPipeline:
    """Dispatches on ``model_index.json``'s ``_class_name``, as diffusers' ``DiffusionPipeline`` does."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, **kwargs: Any):
        """Load the pipeline class named by the folder's ``model_index.json`` (see
        :meth:`TextToVideoSDPipeline.from_pretrained` for the keyword arguments)."""
        hub = {k: kwargs[k] for k in ("variant", "cache_dir", "revision", "local_files_only") if k in kwargs}
        folder = resolve_pretrained(pretrained_model_name_or_path, **hub)
        name = read_model_index(folder).get("_class_name")
        if name not in PIPELINES:
            raise ValueError(f"{pretrained_model_name_or_path}: model_index.json names pipeline {name!r}; "
                             f"videofusion supports {sorted(PIPELINES)}")
        return PIPELINES[name].from_pretrained(str(folder), **kwargs)

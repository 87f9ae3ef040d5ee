"""Pipelines: models and schedulers wired into a generation call (no file formats, no math).

``core`` holds what every pipeline shares (components, memory options, the denoising loop, decoding);
``text_to_video`` is :class:`TextToVideoSDPipeline`, ``video_to_video`` :class:`VideoToVideoSDPipeline`; ``registry`` opens a folder as the pipeline its
``model_index.json`` names (:class:`DiffusionPipeline`); ``folders`` reads and writes those folders.
"""
from .core import TextToVideoSDPipelineOutput, VideoPipeline
from .registry import PIPELINES, DiffusionPipeline
from .text_to_video import TextToVideoSDPipeline
from .video_to_video import VideoToVideoSDPipeline

__all__ = ["DiffusionPipeline", "PIPELINES", "TextToVideoSDPipeline", "TextToVideoSDPipelineOutput", "VideoPipeline",
           "VideoToVideoSDPipeline"]

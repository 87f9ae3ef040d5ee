"""videofusion: text-to-video with UNet3D latent diffusion (ModelScope text-to-video, zeroscope v2).

A drop-in for diffusers' ``TextToVideoSDPipeline``::

    from videofusion import TextToVideoSDPipeline, DPMSolverMultistepScheduler, export_to_video
"""
from .models import AutoencoderKL, UNet3DConditionModel
from .long_video import FIFO, LongVideo
from .noise import initial_latents
from .pipelines import DiffusionPipeline, TextToVideoSDPipeline, TextToVideoSDPipelineOutput, VideoToVideoSDPipeline
from .schedulers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from .io.video import export_to_gif, export_to_video, load_video
from .version import __version__


__all__ = [
    "AutoencoderKL", "UNet3DConditionModel", "TextToVideoSDPipeline", "TextToVideoSDPipelineOutput", "VideoToVideoSDPipeline",
    "DiffusionPipeline", "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler", "HeunDiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler", "PNDMScheduler",
    "UniPCMultistepScheduler", "export_to_gif", "export_to_video", "load_video", "initial_latents", "LongVideo",
    "FIFO",
]

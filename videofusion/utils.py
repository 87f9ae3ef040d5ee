"""diffusers-compatible location of the video helpers: `from videofusion.utils import export_to_video`."""

from .io.video import export_to_gif, export_to_video, load_video

__all__ = ["export_to_gif", "export_to_video", "load_video"]

"""Foreign checkpoint layouts -> our (= diffusers') keys and configs, converted at the edge.

The original ModelScope text-to-video release (``configuration.json``, ``text2video_pytorch_model.pth``,
``VQGAN_autoencoder.pth``, ``open_clip_pytorch_model.bin``; zeroscope v2's original UNet files share the
UNet's layout): one module per layout (:mod:`.unet`, :mod:`.vae`, :mod:`.text`, :mod:`.tokenizer`), the key
tables' checks in :mod:`.keys`, and :mod:`.release`, which reads a release folder and converts it in memory.
``DiffusionPipeline.from_pretrained`` opens such a folder; ``videofusion convert`` writes a diffusers folder.
"""
from .release import OriginalRelease, is_original_release, load_release, read_release

__all__ = ["OriginalRelease", "is_original_release", "load_release", "read_release"]

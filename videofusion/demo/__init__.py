"""The built-in demo model and its kit: a tiny text-to-video model trained by this project on synthetic
moving shapes, shipped in the package (``model/``, the diffusers layout).

``DEMO_MODEL_PATH`` and ``DEMO_DEFAULTS`` are here; the kit that made and measures it is in the modules:
``shapes`` (the synthetic clips), ``evaluation`` (reading colour, shape and direction back from pixels),
``evaluate`` (``videofusion eval-demo``), ``recipe`` (``videofusion init-demo``: the starting folder), with
``autoencoder`` and ``tokenizer`` (its VAE and vocabulary). docs/demo-model.md tells how it was trained.
"""
from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH = Path(__file__).parent / "model"
# Its 4-step student (``videofusion distill configs/distill-demo.toml``: LCMScheduler, guidance embedded).
DEMO_FAST_MODEL_PATH = Path(__file__).parent / "model-4step"

# Settings the demo model was trained and evaluated with (its native size and a short schedule).
DEMO_DEFAULTS = {"num_frames": 16, "num_inference_steps": 25, "guidance_scale": 7.5}
DEMO_FAST_DEFAULTS = {**DEMO_DEFAULTS, "num_inference_steps": 4}

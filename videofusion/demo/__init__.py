"""The built-in demo model and its kit: a tiny text-to-video model trained by this project on synthetic
moving shapes, shipped in the package (``model/``, the diffusers layout).

``DEMO_MODEL_PATH``, ``DEMO_DEFAULTS`` and the front ends' built-in names (``BUILTIN_MODELS``) are here; the
kit that made and measures it is in the modules: ``shapes`` (the synthetic clips), ``evaluation`` (reading
colour, shape and direction back from pixels), ``evaluate`` (``videofusion eval-demo``), ``recipe``
(``videofusion init-demo``: the starting folder), with ``autoencoder`` and ``tokenizer`` (its VAE and
vocabulary). docs/demo-model.md tells how it was trained.
"""
from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH = Path(__file__).parent / "model"
# Its 4-step student (``videofusion distill configs/distill-demo.toml``: LCMScheduler, guidance embedded).
DEMO_FAST_MODEL_PATH = Path(__file__).parent / "model-4step"
# The names the front ends' --model takes for them. The default is the student: it scores as the 25-step model
# on every prompt of eval-demo's set and generates 6.6x faster (docs/demo-model.md); the 25-step model is what
# the recipes (LoRA training, distillation, eval-demo) start from.
BUILTIN_MODELS = {"demo-4step": DEMO_FAST_MODEL_PATH, "demo": DEMO_MODEL_PATH}
DEFAULT_BUILTIN = "demo-4step"

# Settings the demo model was trained and evaluated with (its native size and a short schedule).
DEMO_DEFAULTS = {"num_frames": 16, "num_inference_steps": 25, "guidance_scale": 7.5}
DEMO_FAST_DEFAULTS = {**DEMO_DEFAULTS, "num_inference_steps": 4}

"""The built-in demo model: a tiny text-to-video model trained by this project, shipped in the package."""
from __future__ import annotations

from pathlib import Path

DEMO_MODEL_PATH = Path(__file__).parent / "data" / "demo-model"

# Settings the demo model was trained and evaluated with (its native size and a short schedule).
DEMO_DEFAULTS = {"num_frames": 16, "num_inference_steps": 25, "guidance_scale": 7.5}


def generation_defaults(model: str) -> dict:
    """Call settings to use when the user gives none: the demo model's own, else the pipeline's."""
    try:
        same = Path(model).resolve() == DEMO_MODEL_PATH.resolve()
    except OSError:
        same = False
    return dict(DEMO_DEFAULTS) if same else {}

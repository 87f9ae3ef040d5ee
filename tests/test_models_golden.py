"""Golden values: the fixed tiny checkpoint in tests/data/golden (written by make_golden.py) must keep
giving the same numbers, with our models and with diffusers reading the same folders."""
import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from videofusion.models import AutoencoderKL, UNet3DConditionModel

pytestmark = pytest.mark.usefixtures("models_one_thread")

GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "data", "golden")

# printed once by `python tests/data/golden/make_golden.py`
EXPECTED = {
    'unet_first': [0.248854, 0.104888, -0.096757, -0.455516],
    'unet_last': [-0.321099, -0.091081, -0.352073, -0.249368],
    'vae_mean_first': [0.189199, 0.441339, 0.652660, 0.438283],
    'vae_mean_last': [0.390057, 0.436937, 0.666737, 0.430695],
    'decoded_first': [0.036188, -0.039684, 0.232012],
    'decoded_last': [-0.114583, 0.032854, -0.313246],
}


def make_golden():
    spec = importlib.util.spec_from_file_location("make_golden", os.path.join(GOLDEN_DIR, "make_golden.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(cls, name: str):
    folder = os.path.join(GOLDEN_DIR, name)
    with open(os.path.join(folder, "config.json")) as f:
        model = cls(json.load(f))
    model.load_state_dict(load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors")), strict=True)
    return model.eval()


def check(outputs: dict) -> None:
    for key, want in EXPECTED.items():
        assert torch.allclose(torch.tensor(outputs[key]), torch.tensor(want), atol=1e-4), (key, outputs[key], want)


def test_checkpoint_is_small():
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(GOLDEN_DIR) for f in files
                if f.endswith((".json", ".safetensors")))
    assert total < 300_000


def test_golden_values():
    unet, vae = load(UNet3DConditionModel, "unet"), load(AutoencoderKL, "vae")
    assert unet.dtype == torch.float32
    check(make_golden().golden_outputs(unet, vae))


def test_diffusers_reads_the_golden_folders_to_the_same_values():
    diffusers = pytest.importorskip("diffusers")
    unet = diffusers.UNet3DConditionModel.from_pretrained(os.path.join(GOLDEN_DIR, "unet"), torch_dtype=torch.float32)
    vae = diffusers.AutoencoderKL.from_pretrained(os.path.join(GOLDEN_DIR, "vae"), torch_dtype=torch.float32)
    check(make_golden().golden_outputs(unet.eval(), vae.eval()))

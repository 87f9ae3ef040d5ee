"""Build the golden checkpoint: a tiny fixed UNet3D and VAE in diffusers folder layout.

    python tests/data/golden/make_golden.py        # rewrites unet/ and vae/ next to this file,
                                                   # prints the values to paste into test_models_golden.py

Weights are seeded (PyTorch default init, then seeded noise on every parameter so that zero-initialised
layers count too) and stored in float16 to keep the files small (the models run in float32 on the
float16-rounded values); the inputs are closed-form (sines), so they do not depend on any RNG. Run it again
only when the architecture's numbers are meant to change, and update the hard-coded values.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

UNET = dict(sample_size=8, in_channels=4, out_channels=4, block_out_channels=[8, 8], layers_per_block=1,
            norm_num_groups=4, cross_attention_dim=8, attention_head_dim=2,
            down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
            up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"])
VAE = dict(in_channels=3, out_channels=3, block_out_channels=[8, 8], layers_per_block=1, norm_num_groups=4,
           latent_channels=4, sample_size=16, down_block_types=["DownEncoderBlock2D"] * 2,
           up_block_types=["UpDecoderBlock2D"] * 2)


def wave(shape, freq: float, phase: float = 0.0) -> torch.Tensor:
    """sin(freq * i + phase) over the flat index i, reshaped: the same numbers on every machine."""
    n = 1
    for s in shape:
        n *= s
    return torch.sin(torch.arange(n, dtype=torch.float64) * freq + phase).float().reshape(shape)


def unet_inputs():
    """sample (1, 4, 3, 8, 12), timestep 500, text (1, 5, 8)."""
    return wave((1, 4, 3, 8, 12), 0.37), 500, wave((1, 5, 8), 0.11, 1.0)


def vae_inputs():
    """image (1, 3, 16, 24) in [-1, 1], latents (1, 4, 4, 6)."""
    return wave((1, 3, 16, 24), 0.23), wave((1, 4, 4, 6), 0.53, 0.5)


@torch.no_grad()
def golden_outputs(unet, vae) -> dict:
    """The checked numbers: corners of the UNet output, of the VAE posterior mean and of the decoded image."""
    sample, t, text = unet_inputs()
    out = unet(sample, t, encoder_hidden_states=text, return_dict=False)[0]  # (1, 4, 3, 8, 12)
    image, z = vae_inputs()
    mean = vae.encode(image).latent_dist.mean  # (1, 4, 8, 12)
    decoded = vae.decode(z).sample  # (1, 3, 8, 12)
    return {
        "unet_first": out[0, :, 0, 0, 0].tolist(), "unet_last": out[0, :, -1, -1, -1].tolist(),
        "vae_mean_first": mean[0, :, 0, 0].tolist(), "vae_mean_last": mean[0, :, -1, -1].tolist(),
        "decoded_first": decoded[0, :, 0, 0].tolist(), "decoded_last": decoded[0, :, -1, -1].tolist(),
    }


def _write_atomic(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def save(model, class_name: str, folder: str) -> None:
    """config.json + diffusion_pytorch_model.safetensors, as diffusers writes them."""
    from safetensors.torch import save_file

    from videofusion.models.config import config_to_dict
    os.makedirs(folder, exist_ok=True)
    config = {"_class_name": class_name, "_diffusers_version": "0.42.1", **config_to_dict(model.config)}
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    _write_atomic(os.path.join(folder, "config.json"), lambda p: open(p, "w").write(text))
    weights = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    _write_atomic(os.path.join(folder, "diffusion_pytorch_model.safetensors"),
                  lambda p: save_file(weights, p, metadata={"format": "pt"}))


def build(seed: int = 0):
    from videofusion.models import AutoencoderKL, UNet3DConditionModel
    torch.manual_seed(seed)
    unet, vae = UNet3DConditionModel(UNET).eval(), AutoencoderKL(VAE).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in list(unet.parameters()) + list(vae.parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
            p.copy_(p.half().float())  # exactly what the float16 files hold
    return unet, vae


def main() -> None:
    sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..", "..")))
    unet, vae = build()
    save(unet, "UNet3DConditionModel", os.path.join(HERE, "unet"))
    save(vae, "AutoencoderKL", os.path.join(HERE, "vae"))
    for key, values in golden_outputs(unet, vae).items():
        print(f"    {key!r}: [{', '.join(f'{v:.6f}' for v in values)}],")


if __name__ == "__main__":
    main()

"""The models: UNet3D denoiser and image VAE (diffusers-compatible configs and state dicts)."""
from .config import PretrainedModel
from .unet3d import UNet3DConditionModel, UNet3DConditionOutput, UNet3DConfig
from .vae import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution, VAEConfig

__all__ = [
    "PretrainedModel", "UNet3DConditionModel", "UNet3DConditionOutput", "UNet3DConfig",
    "AutoencoderKL", "AutoencoderKLOutput", "DecoderOutput", "DiagonalGaussianDistribution", "VAEConfig",
]

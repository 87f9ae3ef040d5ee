"""The recipe of the built-in demo model: a tiny text-to-video pipeline trained from scratch on
synthetic moving shapes (:mod:`videofusion.demo.shapes`), 16 frames of 64x64 pixels.

Steps (each reproducible from the repo, see docs/demo-model.md):

1. :func:`init_demo_pipeline` writes a starting pipeline folder: a CLIP tokenizer learned from the
   caption vocabulary, a random tiny CLIP text encoder, a tiny VAE *trained* on the clips' frames
   (:func:`~videofusion.demo.autoencoder.train_autoencoder`), a random tiny UNet3D and the
   ModelScope DDIM scheduler config. (``videofusion init-demo OUT``)
2. ``videofusion train configs/demo.toml`` trains the UNet and the text encoder on the clips.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .shapes import BACKGROUNDS, COLOURS, DIRECTIONS, SHAPES, SIZES, ShapesDataset

SIZE = 64          # pixels, height and width
NUM_FRAMES = 16
MAX_TOKENS = 16    # the captions are at most ~12 tokens

VAE = dict(block_out_channels=[16, 32, 32], layers_per_block=1, norm_num_groups=8, latent_channels=4,
           down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
           sample_size=SIZE, in_channels=3, out_channels=3)
# A fourth block: 64x64 pixels -> 4x8x8 latents, so the same UNet does a quarter of the work per step
# (0.30 against 1.04 s for a training step of batch 4 on 2 CPU threads, measured).
VAE_DOWNSAMPLE_8 = dict(VAE, block_out_channels=[16, 32, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4)
VAE_DOWNSAMPLE = {4: VAE, 8: VAE_DOWNSAMPLE_8}  # pixels per latent (each way) -> VAE config
# Colour-anchored latents (training/autoencoder.py): channels 0-2 are the whitened mean colour of each latent
# cell, channel 3 is free and scaled to this standard deviation.
FREE_CHANNEL_STD = 0.5
# Weight of the shape's pixels in the VAE loss. With 8x8 latents and plain weights, 2,000 steps merged the six
# colours into two or three (36% of reconstructed clips read back with the right colour; the 16x16 VAE: 100%).
FOREGROUND_WEIGHT = {4: 1.0, 8: 10.0}
# The decoder is then fine-tuned alone on clips half of them repainted in random colours (AnyColourClips), so it
# renders colours between the six (orange) instead of snapping them to a neighbour: steps, learning rate.
DECODER_STEPS, DECODER_LEARNING_RATE = 1500, 5e-4
# Attention (spatial, cross and temporal) at 8x8 and 4x4 latents only: at 16x16 it cost 42% of a training step
# on the CPU for little benefit (measured).
UNET = dict(block_out_channels=[32, 64, 96], layers_per_block=1, norm_num_groups=16, cross_attention_dim=64,
            attention_head_dim=8, down_block_types=["DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"],
            up_block_types=["CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"], sample_size=SIZE // 4,
            in_channels=4, out_channels=4)  # sample_size: SIZE // vae_downsample
TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS, projection_dim=64, hidden_act="quick_gelu")
# ModelScope's DDIM schedule, but v-prediction with zero terminal SNR and trailing timesteps (Lin et al. 2024,
# "Common Diffusion Noise Schedules and Sample Steps are Flawed"): with epsilon prediction the model never learned
# to read the prompt (docs/demo-model.md).
SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                 num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
                 timestep_spacing="trailing", set_alpha_to_one=False, steps_offset=1)


def caption_words() -> list[str]:
    """Every word of the synthetic captions (core and detailed forms)."""
    words = {"a", "moving", "on", "background", "slowly", "steadily", "quickly"}
    words |= set(COLOURS) | set(SHAPES) | set(DIRECTIONS) | set(SIZES) | set(BACKGROUNDS)
    return sorted(words)


def init_demo_pipeline(out_dir: str | os.PathLike, vae_steps: int = 2000, seed: int = 0,
                       progress: bool = True, vae_from: str | os.PathLike | None = None,
                       token_embedding_scale: float = 50.0, vae_downsample: int = 8,
                       anchor_colours: bool = True, broadcast_caption: bool = False,
                       decoder_steps: int | None = None) -> Path:
    """Write the starting pipeline folder of the demo model to ``out_dir`` (diffusers layout). The defaults
    are the shipped model's recipe (docs/demo-model.md). The folder is built beside ``out_dir`` and then
    swapped in whole (an existing folder is replaced), so an interrupted run leaves ``out_dir`` as it was.

    ``token_embedding_scale`` (default 50): multiplies the random text encoder's token embeddings (std 0.02 at 1).
    At 50 a word outweighs its position embedding and the random layers, so each position of the
    encoder's output is nearly its own word's vector: "left" and "right" come out ~140% apart at their
    position, against ~29% at 1, which a *frozen* encoder keeps (docs/demo-model.md).

    ``vae_downsample`` (default 8): pixels per latent each way, 4 (16x16 latents, :data:`VAE`) or 8 (8x8
    latents, :data:`VAE_DOWNSAMPLE_8`, a quarter of the UNet's work per step).

    ``anchor_colours`` (default True): train the VAE with colour-anchored latents (channels 0-2 = the whitened mean colour
    of each latent cell, channel 3 free at standard deviation :data:`FREE_CHANNEL_STD`, ``scaling_factor``
    1; see :mod:`~videofusion.demo.autoencoder`), so the UNet's loss weighs the shape's colour and
    position as much as the background.

    ``broadcast_caption`` (default False): the text encoder's first layer attends uniformly (causal mean over
    the tokens so far) and the end/padding token's embedding is zero, so the positions after the caption
    carry every word of it about equally (see :func:`broadcast_caption_words`).

    ``vae_from``: a pipeline folder whose trained ``vae/`` is reused instead of training one (the VAE
    training is seeded, so a folder written earlier by this function with the same ``seed`` and
    ``vae_steps`` gives the same result, ~7 minutes sooner on 2 CPU cores).

    ``decoder_steps`` (default None: :data:`DECODER_STEPS` for a VAE trained here, 0 for one reused from
    ``vae_from``): fine-tune the VAE's decoder alone for that many steps on clips half of them repainted in
    random colours (:class:`~videofusion.demo.autoencoder.AnyColourClips`), so that it renders any colour its
    latents hold; the encoder, and so the latents, stay as they were.
    """
    from ..io.saving import atomic_folder
    from ..models import AutoencoderKL, UNet3DConditionModel
    from ..pipelines.text_to_video import TextToVideoSDPipeline
    from ..schedulers import DDIMScheduler
    from .autoencoder import AnyColourClips, colour_whitening, fit_scaling_factor, scale_free_channels, train_autoencoder
    from .tokenizer import build_clip_tokenizer

    if not token_embedding_scale > 0:
        raise ValueError(f"token_embedding_scale: must be > 0, got {token_embedding_scale}")
    if decoder_steps is not None and decoder_steps < 0:
        raise ValueError(f"decoder_steps: must be >= 0, got {decoder_steps}")
    if vae_downsample not in VAE_DOWNSAMPLE:
        raise ValueError(f"vae_downsample: must be one of {sorted(VAE_DOWNSAMPLE)}, got {vae_downsample!r}")
    vae_config = VAE_DOWNSAMPLE[vae_downsample]
    reused_vae = None
    if vae_from is not None:
        reused_vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", torch_dtype=torch.float32)
        if list(reused_vae.config.block_out_channels) != vae_config["block_out_channels"]:
            raise ValueError(f"vae_from: {vae_from} holds a VAE with block_out_channels "
                             f"{reused_vae.config.block_out_channels}, vae_downsample {vae_downsample} uses "
                             f"{vae_config['block_out_channels']}")
    with atomic_folder(out_dir) as out:  # an interrupted run leaves out_dir as it was
        tokenizer = build_clip_tokenizer(caption_words(), out / ".vocab", model_max_length=MAX_TOKENS)
        torch.manual_seed(seed)
        text_encoder = demo_text_encoder(tokenizer, token_embedding_scale, broadcast_caption)
        unet = UNet3DConditionModel(**{**UNET, "sample_size": SIZE // vae_downsample})
        frames = ShapesDataset(2000, seed=seed + 1, num_frames=NUM_FRAMES, height=SIZE, width=SIZE)
        if reused_vae is not None:
            vae = reused_vae
        else:
            vae = AutoencoderKL(**vae_config)
            anchor = (vae_downsample, *colour_whitening(frames, vae_downsample, seed=seed)) if anchor_colours else None
            train_autoencoder(vae, frames, steps=vae_steps, seed=seed, progress=progress,
                              foreground_weight=FOREGROUND_WEIGHT[vae_downsample], anchor=anchor)
            if anchor_colours:
                scale_free_channels(vae, frames, FREE_CHANNEL_STD, seed=seed)
                vae = _with_scaling(vae, vae_config, 1.0)
            else:
                vae = _with_scaling(vae, vae_config, fit_scaling_factor(vae, frames, seed=seed))
        if decoder_steps is None:
            decoder_steps = 0 if reused_vae is not None else DECODER_STEPS
        if decoder_steps:
            train_autoencoder(vae, AnyColourClips(frames, seed=seed), steps=decoder_steps,
                              learning_rate=DECODER_LEARNING_RATE, seed=seed + 1, progress=progress,
                              foreground_weight=FOREGROUND_WEIGHT[vae_downsample], decoder_only=True)
        pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                     scheduler=DDIMScheduler(**SCHEDULER))
        pipe.save_pretrained(str(out))
        shutil.rmtree(out / ".vocab", ignore_errors=True)
    return Path(out_dir)


def demo_text_encoder(tokenizer, token_embedding_scale: float = 50.0, broadcast_caption: bool = False):
    """A random CLIP text encoder of the demo's size (:data:`TEXT`) for ``tokenizer``'s vocabulary, drawn from
    torch's global random state (seed it first), token embeddings multiplied by ``token_embedding_scale``
    and, with ``broadcast_caption``, edited by :func:`broadcast_caption_words`."""
    from transformers import CLIPTextConfig, CLIPTextModel
    text_encoder = CLIPTextModel(CLIPTextConfig(
        **TEXT, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight.mul_(token_embedding_scale)
    if broadcast_caption:
        broadcast_caption_words(text_encoder, tokenizer.pad_token_id)
    return text_encoder


def broadcast_caption_words(text_encoder, pad_token_id: int) -> None:
    """Make a random CLIP text encoder hand every word of the caption to every later position, in place.

    The first layer's query and key projections become zero, so each position attends uniformly to itself
    and the positions before it (CLIP's attention is causal), and the padding token's embedding becomes
    zero, so the padding positions hold that average of the caption and little else. A random encoder
    leaks a word into the later positions only a little ("left" against "up": 140% apart at the word,
    7-15% at the padding); a jointly trained one learned to copy the colour word into every position
    (136-168%) and to drop the direction (1%), and the UNet never read it. With this, at the padding
    positions the colour, shape and direction words each move the output by 33-59%.
    """
    layers = text_encoder.encoder.layers if hasattr(text_encoder, "encoder") else text_encoder.text_model.encoder.layers
    attention = layers[0].self_attn
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[pad_token_id] = 0.0
        for projection in (attention.q_proj, attention.k_proj):
            projection.weight.zero_()
            projection.bias.zero_()


def _with_scaling(vae, config: dict, factor: float):
    """The same VAE weights under ``config`` with ``scaling_factor`` = ``factor`` (5 decimals)."""
    from ..models import AutoencoderKL
    fitted = AutoencoderKL(**{**config, "scaling_factor": round(factor, 5)})
    fitted.load_state_dict(vae.state_dict())
    return fitted.eval().requires_grad_(False)

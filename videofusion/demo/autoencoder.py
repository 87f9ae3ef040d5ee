"""Train a (small) AutoencoderKL on the frames of a video dataset, for models trained from scratch.

Loss (as in the latent-diffusion autoencoders, Rombach et al. 2022, without the adversarial and
perceptual terms): ``|x - D(z)|_1 + |x - D(z)|_2^2 + kl_weight * KL(q(z|x) || N(0, I))``, with ``z``
sampled from the posterior. With ``foreground_weight`` w > 1 the pixel terms are weighted means, w on
pixels that differ from the frame's top-left pixel (the plain background of the synthetic clips) and 1
elsewhere: a small shape's colour then counts for more than the background it sits on. Afterwards
:func:`fit_scaling_factor` sets ``scaling_factor`` to ``1 / std(z)`` so the diffusion model sees
unit-variance latents.

Colour-anchored latents (``anchor``): the first three latent channels are trained to equal the mean
colour of each latent cell (``factor x factor`` pixels), whitened over the data set
(:func:`colour_whitening`), and the other channels are free. A plain KL autoencoder puts almost all of
its latent variance into the background (one direction holds 98% of it on the moving-shapes clips), so
the diffusion loss hardly sees the shape's colour or where it is; whitened colour channels give the
shape's colour and position as much weight as the background's brightness. The free channels carry the
detail the decoder needs (edges, the shape's outline) and are rescaled by :func:`scale_free_channels`.

Any colour (``decoder_only`` on :class:`AnyColourClips`): a decoder trained on the six colours of the data
set alone renders a colour between two of them as one of the two (an orange clip's latents decode as yellow),
so a new colour taught to the diffusion model could never be seen. Fine-tuning the decoder alone on clips
repainted in random colours keeps the encoder, and so every latent the diffusion model learned from, as it
was, and makes the decoder render the colour its latents hold.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .shapes import clip_to_tensor, foreground_mask, render_clip


class AnyColourClips(torch.utils.data.Dataset):
    """The clips of ``dataset`` (a :class:`~videofusion.demo.shapes.ShapesDataset`), ``share`` of them (default
    one half) repainted in a random colour: hue uniform over the circle, HSV saturation 0.55-0.9 and value
    0.75-0.97 (the range of the data set's own colours), drawn per clip from ``(seed, index)`` alone. Items are
    ``{"video": (3, f, h, w) in [-1, 1]}``."""

    def __init__(self, dataset, share: float = 0.5, seed: int = 0):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share: must be in [0, 1], got {share!r}")
        self.dataset, self.share, self.seed = dataset, share, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def colour(self, index: int) -> tuple[float, float, float] | None:
        """Clip ``index``'s new colour (RGB, 0..255), or None where it keeps its own."""
        rng = np.random.default_rng([self.seed, index, 9])
        if rng.random() >= self.share:
            return None
        hue, saturation, value = rng.random(), rng.uniform(0.55, 0.9), rng.uniform(0.75, 0.97)
        return tuple(255.0 * c for c in colorsys.hsv_to_rgb(hue, saturation, value))

    def __getitem__(self, index: int) -> dict:
        ds = self.dataset
        clip = render_clip(ds.specs[index], ds.num_frames, ds.height, ds.width, ds.trail, rgb=self.colour(index))
        return {"video": clip_to_tensor(clip)}  # (3, f, h, w)


def _frames(dataset, indices: list[int], frames_per_clip: int, g: torch.Generator) -> torch.Tensor:
    clips = torch.stack([dataset[i]["video"] for i in indices])  # (b, 3, f, h, w)
    b, c, f, h, w = clips.shape
    pick = torch.randint(f, (b, frames_per_clip), generator=g)  # (b, k) frame indices
    frames = clips.permute(0, 2, 1, 3, 4)[torch.arange(b)[:, None], pick]  # (b, k, 3, h, w)
    return frames.reshape(b * frames_per_clip, c, h, w)  # (b*k, 3, h, w)


def _sample_frames(dataset, num_clips: int, seed: int) -> torch.Tensor:
    """4 random frames of each of ``num_clips`` random clips, ``(num_clips*4, 3, h, w)``, from ``seed`` alone."""
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(dataset), (num_clips,), generator=g).tolist()
    return _frames(dataset, indices, 4, g)


def cell_colours(frames: torch.Tensor, factor: int) -> torch.Tensor:
    """Mean colour of each ``factor x factor`` cell: ``(n, 3, h, w)`` -> ``(n, 3, h / factor, w / factor)``."""
    return torch.nn.functional.avg_pool2d(frames, factor)


@torch.no_grad()
def colour_whitening(dataset, factor: int, num_clips: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA whitening of the cell colours (:func:`cell_colours`) of ``num_clips`` clips of ``dataset``:
    ``(mean (3,), matrix (3, 3))`` such that ``matrix @ (colour - mean)`` has zero mean and identity
    covariance over the data, and stays closest to the RGB axes (channel 0 is still mostly red)."""
    colours = cell_colours(_sample_frames(dataset, num_clips, seed), factor)  # (n, 3, h', w')
    flat = colours.permute(0, 2, 3, 1).reshape(-1, 3).double()  # (n*h'*w', 3)
    mean = flat.mean(0)
    values, vectors = torch.linalg.eigh(torch.cov((flat - mean).T))
    matrix = vectors @ torch.diag(values.clamp_min(1e-8).rsqrt()) @ vectors.T  # (3, 3), symmetric
    return mean.float(), matrix.float()


def anchor_target(frames: torch.Tensor, anchor: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The whitened cell colours ``(n, 3, h', w')`` that the first three latent channels of frames
    ``(n, 3, h, w)`` are trained to equal; ``anchor = (factor, mean, matrix)`` (:func:`colour_whitening`)."""
    factor, mean, matrix = anchor
    colours = cell_colours(frames, factor) - mean[:, None, None]  # (n, 3, h', w')
    return torch.einsum("dc,nchw->ndhw", matrix, colours)


def train_autoencoder(vae, dataset, steps: int = 1000, clips_per_step: int = 4, frames_per_clip: int = 4,
                      learning_rate: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0,
                      progress: bool = True, foreground_weight: float = 1.0,
                      anchor: tuple[int, torch.Tensor, torch.Tensor] | None = None,
                      anchor_weight: float = 1.0, decoder_only: bool = False) -> list[float]:
    """Train ``vae`` in place on random frames of ``dataset`` (items ``{"video": (3, f, h, w)}``) and
    return the loss per step. Deterministic for a given ``seed``.

    ``anchor = (factor, mean, matrix)``: the posterior mean's first three channels are pulled towards the
    whitened cell colours (:func:`anchor_target`, ``factor`` = the VAE's downsampling) with an MSE of
    weight ``anchor_weight``; the VAE needs ``latent_channels >= 3``. ``decoder_only``: train the decoder (and
    ``post_quant_conv``) alone; the encoder's weights, and so every latent, stay bit for bit as they were."""
    if steps < 1 or clips_per_step < 1 or frames_per_clip < 1:
        raise ValueError("steps, clips_per_step and frames_per_clip: must be >= 1")
    if not foreground_weight >= 1.0:
        raise ValueError(f"foreground_weight: must be >= 1, got {foreground_weight}")
    if anchor is not None and vae.config.latent_channels < 3:
        raise ValueError(f"anchor: needs latent_channels >= 3, the VAE has {vae.config.latent_channels}")
    if decoder_only and anchor is not None:
        raise ValueError("anchor: trains the encoder, so it cannot be combined with decoder_only")
    vae.train().requires_grad_(not decoder_only)
    if decoder_only:
        vae.decoder.requires_grad_(True)
        vae.post_quant_conv.requires_grad_(True)
    trained = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate * 0.05)
    losses = []
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        indices = torch.randint(len(dataset), (clips_per_step,), generator=g).tolist()
        x = _frames(dataset, indices, frames_per_clip, g)  # (n, 3, h, w) in [-1, 1]
        with torch.set_grad_enabled(not decoder_only):
            posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
        error = recon - x
        weight = 1.0 + (foreground_weight - 1.0) * foreground_mask(x)
        weight = weight / weight.mean()  # (n, 1, h, w): 1 everywhere when foreground_weight is 1
        loss = (weight * error.abs()).mean() + (weight * error.pow(2)).mean() + kl_weight * kl
        if anchor is not None:
            loss = loss + anchor_weight * (posterior.mean[:, :3] - anchor_target(x, anchor)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def fit_scaling_factor(vae, dataset, num_clips: int = 32, seed: int = 0) -> float:
    """``1 / std`` of the posterior means over ``num_clips`` clips: the value for ``scaling_factor``."""
    return float(1.0 / vae.encode(_sample_frames(dataset, num_clips, seed)).latent_dist.mode().std())


@torch.no_grad()
def scale_free_channels(vae, dataset, std: float, first: int = 3, num_clips: int = 32, seed: int = 0) -> list[float]:
    """Rescale latent channels ``first`` and up (the free channels of a colour-anchored VAE) to standard
    deviation ``std`` over ``num_clips`` clips, in place and exactly: ``quant_conv`` multiplies those
    channels' means by ``s = std / measured`` (and their log-variances gain ``2 log s``), ``post_quant_conv``
    divides them by ``s`` again, so decoding the posterior mean gives the same image. Returns the ``s``."""
    z = vae.encode(_sample_frames(dataset, num_clips, seed)).latent_dist.mode()  # (n, c, h', w')
    latent = vae.config.latent_channels
    scales = [std / float(z[:, c].std().clamp_min(1e-8)) for c in range(first, latent)]
    for c, s in zip(range(first, latent), scales):
        vae.quant_conv.weight[c] *= s
        vae.quant_conv.bias[c] *= s
        vae.quant_conv.bias[latent + c] += 2.0 * math.log(s)
        vae.post_quant_conv.weight[:, c] /= s
    return scales

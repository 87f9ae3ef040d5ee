"""Train a (small) AutoencoderKL on the frames of a video dataset, for models trained from scratch.

Loss (as in the latent-diffusion autoencoders, Rombach et al. 2022, without the adversarial and
perceptual terms): ``|x - D(z)|_1 + |x - D(z)|_2^2 + kl_weight * KL(q(z|x) || N(0, I))``, with ``z``
sampled from the posterior. With ``foreground_weight`` w > 1 the pixel terms are weighted means, w on
pixels that differ from the frame's top-left pixel (the plain background of the synthetic clips) and 1
elsewhere: a small shape's colour then counts for more than the background it sits on. Afterwards
:func:`fit_scaling_factor` sets ``scaling_factor`` to ``1 / std(z)`` so the diffusion model sees
unit-variance latents.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .data import foreground_mask


def _frames(dataset, indices: list[int], frames_per_clip: int, g: torch.Generator) -> torch.Tensor:
    clips = torch.stack([dataset[i]["video"] for i in indices])  # (b, 3, f, h, w)
    b, c, f, h, w = clips.shape
    pick = torch.randint(f, (b, frames_per_clip), generator=g)  # (b, k) frame indices
    frames = clips.permute(0, 2, 1, 3, 4)[torch.arange(b)[:, None], pick]  # (b, k, 3, h, w)
    return frames.reshape(b * frames_per_clip, c, h, w)  # (b*k, 3, h, w)


def train_autoencoder(vae, dataset, steps: int = 1000, clips_per_step: int = 4, frames_per_clip: int = 4,
                      learning_rate: float = 1e-3, kl_weight: float = 1e-6, seed: int = 0,
                      progress: bool = True, foreground_weight: float = 1.0) -> list[float]:
    """Train ``vae`` in place on random frames of ``dataset`` (items ``{"video": (3, f, h, w)}``) and
    return the loss per step. Deterministic for a given ``seed``."""
    if steps < 1 or clips_per_step < 1 or frames_per_clip < 1:
        raise ValueError("steps, clips_per_step and frames_per_clip: must be >= 1")
    if not foreground_weight >= 1.0:
        raise ValueError(f"foreground_weight: must be >= 1, got {foreground_weight}")
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=learning_rate * 0.05)
    losses = []
    bar = tqdm(range(steps), desc="autoencoder", disable=not progress)
    for step in bar:
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        indices = torch.randint(len(dataset), (clips_per_step,), generator=g).tolist()
        x = _frames(dataset, indices, frames_per_clip, g)  # (n, 3, h, w) in [-1, 1]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).sum(dim=(1, 2, 3)).mean()
        error = recon - x
        weight = 1.0 + (foreground_weight - 1.0) * foreground_mask(x)
        weight = weight / weight.mean()  # (n, 1, h, w): 1 everywhere when foreground_weight is 1
        loss = (weight * error.abs()).mean() + (weight * error.pow(2)).mean() + kl_weight * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
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
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(len(dataset), (num_clips,), generator=g).tolist()
    x = _frames(dataset, indices, 4, g)
    return float(1.0 / vae.encode(x).latent_dist.mode().std())

"""Does the latent space decide what a small text-to-video UNet learns? A pixel-space study.

    python bench/demo_latent_space.py --latents plain|whitened [--steps 1500] [--every 250] [--clips 2000]

The demo UNet (``training/demo_recipe.py``: UNET, TEXT, SCHEDULER) is trained from scratch on 8x8 "latents"
that need no autoencoder: the mean colour of each 8x8-pixel cell of the moving-shapes clips
(``ShapesDataset``, crossing starts), normalised in one of two ways:

* ``plain``: minus the mean colour, divided by one global standard deviation (what ``scaling_factor``
  does for a VAE's latents). The background's brightness then holds about 97% of the variance, so the
  diffusion loss hardly sees the shape's colour or where it is;
* ``whitened``: ZCA-whitened over the data (``training.autoencoder.colour_whitening``), so the shape's
  colour and position weigh as much as the background: the latent space of the demo model's VAE, whose
  first three channels are trained to equal exactly this (``init-demo --anchor-colours``).

Every ``--every`` steps the EMA model generates 16 videos of seen captions (DDIM, 20 steps, guidance 5),
the cells are turned back into colours, upsampled to 64x64 and scored by the evaluator
(:mod:`videofusion.evaluation`). Prints a table: step, seconds, loss, colour, direction, shape.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latents", choices=("plain", "whitened"), required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=250, help="steps between evaluations")
    p.add_argument("--clips", type=int, default=2000, help="training clips")
    p.add_argument("--videos", type=int, default=16, help="videos per evaluation")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    for name in ("steps", "every", "clips", "videos", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")

    from videofusion.evaluation import score_clip, summarise
    from videofusion.models import UNet3DConditionModel
    from videofusion.schedulers import DDIMScheduler, DDPMScheduler
    from videofusion.training.autoencoder import cell_colours, colour_whitening
    from videofusion.training.demo_recipe import SCHEDULER, UNET, caption_words, demo_text_encoder
    from videofusion.training.shapes import ShapesDataset, combos
    from videofusion.training.tokenizer import build_clip_tokenizer
    from videofusion.training.train import EMA, sample_timesteps

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = ShapesDataset(args.clips, seed=0, start_spread=0.1, cross_spread=0.5)
    clips = torch.stack([data[i]["video"] for i in range(len(data))])  # (n, 3, f, 64, 64)
    n, _, f, h, w = clips.shape
    cells = cell_colours(clips.transpose(1, 2).reshape(n * f, 3, h, w), 8)  # (n*f, 3, 8, 8)
    cells = cells.reshape(n, f, 3, h // 8, w // 8).transpose(1, 2)  # (n, 3, f, 8, 8)
    captions = [data[i]["caption"] for i in range(len(data))]
    mean, whiten = colour_whitening(data, 8, num_clips=min(256, len(data)))
    if args.latents == "whitened":
        matrix = whiten
    else:
        std = (cells - mean[:, None, None, None]).std()
        matrix = torch.eye(3) / std
    to_latent = lambda x: torch.einsum("dc,ncfhw->ndfhw", matrix, x - mean[:, None, None, None])  # noqa: E731
    inverse = torch.linalg.inv(matrix)
    to_colour = lambda z: torch.einsum("cd,ndfhw->ncfhw", inverse, z) + mean[:, None, None, None]  # noqa: E731
    latents = to_latent(cells)

    with tempfile.TemporaryDirectory() as vocab:
        tokenizer = build_clip_tokenizer(caption_words(), vocab, model_max_length=16)
    text_encoder = demo_text_encoder(tokenizer, token_embedding_scale=50.0)
    unet = UNet3DConditionModel(**{**UNET, "sample_size": 8, "in_channels": 3, "out_channels": 3})
    noise_scheduler = DDPMScheduler(**SCHEDULER)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=5e-4)
    ema = EMA(params, 0.995)

    def encode(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt").input_ids
        return text_encoder(ids)[0]  # (b, 16, 64)

    @torch.no_grad()
    def evaluate() -> dict:
        trained = [q.detach().clone() for q in params]
        ema.copy_to_params()
        unet.eval()
        text_encoder.eval()
        seen = combos("train")
        prompts = [f"a {c} {s} moving {d}" for c, s, d in seen[:: max(1, len(seen) // args.videos)]][: args.videos]
        sampler = DDIMScheduler(**SCHEDULER)
        sampler.set_timesteps(20)
        x = torch.randn(len(prompts), 3, f, 8, 8, generator=torch.Generator().manual_seed(0))
        context = encode(prompts + [""] * len(prompts))
        for t in sampler.timesteps:
            conditional, unconditional = unet(torch.cat([x, x]), t, encoder_hidden_states=context).sample.chunk(2)
            x = sampler.step(unconditional + 5.0 * (conditional - unconditional), t, x).prev_sample
        colours = to_colour(x).transpose(1, 2).reshape(-1, 3, 8, 8)  # (b*f, 3, 8, 8)
        frames = F.interpolate(colours, size=(h, w), mode="bilinear", align_corners=False)  # (b*f, 3, h, w)
        frames = ((frames.reshape(len(prompts), f, 3, h, w).permute(0, 1, 3, 4, 2) + 1) / 2).clamp(0, 1)
        for q, saved in zip(params, trained):
            q.copy_(saved)
        unet.train()
        text_encoder.train()
        return summarise(score_clip(v.numpy(), prompt) for v, prompt in zip(frames, prompts))

    spectrum = torch.linalg.eigvalsh(torch.cov(latents.transpose(0, 1).reshape(3, -1))).tolist()
    print(f"latents {args.latents}: eigenvalues of the channel covariance {[round(v, 3) for v in spectrum]}")
    print("| step | seconds | loss | colour | direction | shape |")
    print("|---|---|---|---|---|---|")
    losses, start = [], time.perf_counter()
    for step in range(args.steps):
        g = torch.Generator().manual_seed(step)
        index = torch.randint(len(data), (4,), generator=g)
        dropped = (torch.rand(4, generator=g) < 0.1).tolist()
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=g)
        t = sample_timesteps(4, 1000, 2.0, g)
        noisy, target = noise_scheduler.add_noise(x0, noise, t), noise_scheduler.get_velocity(x0, noise, t)
        context = encode(["" if d else captions[i] for i, d in zip(index.tolist(), dropped)])
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=context).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        for group in optimizer.param_groups:
            group["lr"] = 5e-4 * min(1.0, (step + 1) / 100)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(step)
        losses.append(loss.item())
        if (step + 1) % args.every == 0 or step + 1 == args.steps:
            s = evaluate()
            recent = losses[-args.every:]
            print(f"| {step + 1} | {time.perf_counter() - start:.0f} | {sum(recent) / len(recent):.4f} | "
                  f"{s['colour']:.0%} | {s['direction']:.0%} | {s['shape']:.0%} |", flush=True)


if __name__ == "__main__":
    main()

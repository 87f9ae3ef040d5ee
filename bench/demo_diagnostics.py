"""Why a demo model does or does not follow its prompt: the measurements in docs/demo-model.md.

    python bench/demo_diagnostics.py text-encoder MODEL [--scale WORD=S ...]
    python bench/demo_diagnostics.py caption-loss MODEL [--start-spread 0.1] [--trail 0]
    python bench/demo_diagnostics.py layout MODEL [--start-spread 0.1] [--trail 0] [--draws 32]
    python bench/demo_diagnostics.py vae MODEL [--clips 100]
    python bench/demo_diagnostics.py latent-colours MODEL
    python bench/demo_diagnostics.py classify MODEL [--word colour|direction|shape] [--clips 24] [--start-spread 0.1]
    python bench/demo_diagnostics.py word-swap MODEL [--draws 4]

MODEL is a pipeline folder (say ``videofusion/data/demo-model``); ``--start-spread`` and ``--trail`` pick
the data the model was trained on (``ShapesDataset`` options).

``text-encoder``: relative L2 distance between the text encoder's outputs (all positions, the
largest at one position, and the mean over the end and padding positions, which get about half of the UNet's
cross-attention) for "a red circle moving left" and the caption with one word changed. A word
the encoder maps close to another cannot be told apart by the UNet. ``--scale left=50`` multiplies that
word's token embedding first (what ``init-demo --token-embedding-scale`` does to every word).

``caption-loss``: the v-prediction loss on 16 held-aside clips (``ShapesDataset`` seed 5) with the true,
a shuffled and an empty caption, in three timestep bands. When the three agree, the model ignores the
prompt in that band.

``layout``: at t = T (zero terminal SNR) the input is pure noise and the loss-optimal v-prediction is
``-E[x0 | caption]``, so the model's output averaged over noise should match the mean latent video of
the clips with that caption. Both are split into a static part (the mean over frames) and a temporal
part (what is left); the script prints the cosine similarity and norm ratio of each part. A model that
has learned where a "moving left" shape is at each frame has a temporal cosine near 1; one that cannot
tell its frames apart outputs the same frame 16 times (temporal cosine near 0, ratio near 0).

``vae``: the evaluator (:mod:`videofusion.evaluation`) on the VAE's reconstructions of ``--clips``
rendered clips (``ShapesDataset`` seed 123, uniform starts; encoded as training does, decoded as
generation does): the ceiling the VAE puts on the scores of any UNet trained in its latent space.

``latent-colours``: for each colour, the nearest other colour in the VAE's latent space: the L2 distance
between the scaled latents of one frame of a medium circle (centred, dark background) in the two colours,
next to their distance in pixels (RGB in [0, 1], summed over the frame). The diffusion model is trained
with an MSE in latent space, so two colours whose latents are close cost little to confuse, however far
apart they look.

``classify``: the model as a diffusion classifier (Li et al. 2023, "Your Diffusion Model is Secretly a
Zero-Shot Classifier"). For each of ``--clips`` rendered clips (``ShapesDataset`` seed 11), the caption's
``--word`` (colour, direction or shape) is swapped for every word of its kind; at each of four timesteps,
the caption with the lowest v-prediction loss (two noise draws, shared by the captions) is the model's
pick. Accuracy per timestep says at which noise levels the model reads that word: a model that reads the
colour at t = 500 but not at t = 950 knows colours, but cannot set them in the first sampling steps, where
a video's colours are decided.

``word-swap``: how much the UNet's output on the same noisy input changes (relative L2, mean over
``--draws`` noise draws of one rendered clip) when one word of "a red circle moving left" is changed, or
the caption emptied, at t = 999, 900, 800 and 500. A word whose change moves the output by a fraction of a
percent is not read, whatever the text encoder does with it.

Everything runs on the CPU in well under a minute; numbers are deterministic for a given model.
"""
from __future__ import annotations

import argparse

import torch

from videofusion import TextToVideoSDPipeline
from videofusion.evaluation import score_clip, summarise
from videofusion.schedulers import DDPMScheduler
from videofusion.training.shapes import (COLOURS, DIRECTIONS, SHAPES, ShapesDataset, ShapeSpec, caption,
                                         render_clip)
from videofusion.training.data import clip_to_tensor
from videofusion.training.train import encode_clips

BASE = "a red circle moving left"
CHANGED = ("a red circle moving right", "a red circle moving up", "a blue circle moving left",
           "a red square moving left")
LAYOUT_CAPTIONS = ("a red circle moving left", "a blue square moving right", "a green triangle moving up",
                   "a yellow circle moving down")


def _context(pipe: TextToVideoSDPipeline, captions: list[str]) -> torch.Tensor:
    return pipe.encode_prompt(captions, torch.device("cpu"), 1, False)[0]  # (b, tokens, dim)


def text_encoder(pipe: TextToVideoSDPipeline, scales: dict[str, float]) -> None:
    weight = pipe.text_encoder.embeddings.token_embedding.weight
    for word, scale in scales.items():
        for token in pipe.tokenizer(word, add_special_tokens=False).input_ids:
            weight[token] *= scale
    base = _context(pipe, [BASE])[0]  # (tokens, dim)
    ids = pipe.tokenizer([BASE], padding="max_length", max_length=base.shape[0]).input_ids[0]
    padding = torch.tensor(ids) == pipe.tokenizer.pad_token_id  # the end token and the padding after it
    print(f"| caption (vs '{BASE}') | all positions | largest at one position | padding positions (mean) |")
    print("|---|---|---|---|")
    for changed in CHANGED:
        other = _context(pipe, [changed])[0]
        per_position = (other - base).norm(dim=-1) / base.norm(dim=-1)
        print(f"| {changed} | {((other - base).norm() / base.norm()).item():.1%} | "
              f"{per_position.max().item():.1%} (position {per_position.argmax().item()}) | "
              f"{per_position[padding].mean().item():.1%} |")


def caption_loss(pipe: TextToVideoSDPipeline, start_spread: float, trail: int) -> None:
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    data = ShapesDataset(16, seed=5, start_spread=start_spread, trail=trail)
    z = encode_clips(pipe.vae, torch.stack([data[i]["video"] for i in range(len(data))]))
    captions = [data[i]["caption"] for i in range(len(data))]
    variants = {"true": captions, "shuffled": captions[3:] + captions[:3], "empty": [""] * len(captions)}
    generator = torch.Generator().manual_seed(0)
    print("| timesteps | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for low, high in ((900, 1000), (500, 900), (0, 500)):
        t = torch.randint(low, high, (len(z),), generator=generator)
        noise = torch.randn(z.shape, generator=generator)
        noisy, target = scheduler.add_noise(z, noise, t), scheduler.get_velocity(z, noise, t)
        losses = [torch.nn.functional.mse_loss(
            pipe.unet(noisy, t, encoder_hidden_states=_context(pipe, c)).sample, target).item()
            for c in variants.values()]
        print(f"| [{low}, {high}) | " + " | ".join(f"{v:.4f}" for v in losses) + " |")


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a * b).sum() / (a.norm() * b.norm())).item()


def layout(pipe: TextToVideoSDPipeline, start_spread: float, trail: int, draws: int = 32) -> None:
    data = ShapesDataset(2000, seed=0, start_spread=start_spread, trail=trail)
    last = pipe.scheduler.config.num_train_timesteps - 1
    generator = torch.Generator().manual_seed(0)
    print("| caption | clips | static cosine | temporal cosine | temporal norm, model / data |")
    print("|---|---|---|---|---|")
    for text in LAYOUT_CAPTIONS:
        index = [i for i, spec in enumerate(data.specs) if caption(spec) == text]
        mean_clip = encode_clips(pipe.vae, torch.stack([data[i]["video"] for i in index])).mean(0)  # (4, f, h, w)
        outputs = []
        for start in range(0, draws, 8):
            n = min(8, draws - start)
            noise = torch.randn(n, *mean_clip.shape, generator=generator)  # (n, 4, f, h, w)
            outputs.append(-pipe.unet(noise, torch.full((n,), last), encoder_hidden_states=_context(
                pipe, [text] * n)).sample)
        model = torch.cat(outputs).mean(0)  # (4, f, h, w)
        static_data, static_model = mean_clip.mean(1, keepdim=True), model.mean(1, keepdim=True)  # (4, 1, h, w)
        temporal_data, temporal_model = mean_clip - static_data, model - static_model
        static = _cosine(static_data - static_data.mean(), static_model - static_model.mean())
        temporal = _cosine(temporal_data, temporal_model)
        ratio = (temporal_model.norm() / temporal_data.norm()).item()
        print(f"| {text} | {len(index)} | {static:.2f} | {temporal:.2f} | {ratio:.2f} |")


def vae(pipe: TextToVideoSDPipeline, clips: int) -> None:
    data = ShapesDataset(clips, seed=123)
    results = []
    for i in range(clips):
        item = data[i]
        latents = encode_clips(pipe.vae, item["video"][None])  # (1, 4, f, h, w), as training sees them
        video = pipe.postprocess(pipe.decode_latents(latents), "np")[0]  # (f, H, W, 3), as generation decodes
        results.append(score_clip(video, item["caption"]))
    summary = summarise(results)
    print("| clips | colour | direction | shape |")
    print("|---|---|---|---|")
    print(f"| {summary['n']} | {summary['colour']:.1%} | {summary['direction']:.1%} | {summary['shape']:.1%} |")


def latent_colours(pipe: TextToVideoSDPipeline) -> None:
    frames, latents = {}, {}
    for colour in COLOURS:
        clip = render_clip(ShapeSpec(colour, "circle", "right", start=(0.5, 0.5)), 1, 64, 64)  # (1, h, w, 3)
        frames[colour] = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255.0  # (3, 1, h, w) in [0, 1]
        latents[colour] = encode_clips(pipe.vae, frames[colour][None] * 2 - 1)[0]  # (4, 1, h/8, w/8)
    print("| colour | nearest in latent space | latent distance | pixel distance |")
    print("|---|---|---|---|")
    for colour in COLOURS:
        others = {other: (latents[colour] - latents[other]).norm().item() for other in COLOURS if other != colour}
        nearest = min(others, key=others.get)
        pixels = (frames[colour] - frames[nearest]).norm().item()
        print(f"| {colour} | {nearest} | {others[nearest]:.2f} | {pixels:.2f} |")


CLASSIFY_TIMESTEPS = (200, 500, 800, 950)
WORDS = {"colour": tuple(COLOURS), "direction": DIRECTIONS, "shape": SHAPES}


def classify(pipe: TextToVideoSDPipeline, word: str, clips: int, start_spread: float) -> None:
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    data = ShapesDataset(clips, seed=11, start_spread=start_spread)
    choices = WORDS[word]
    generator = torch.Generator().manual_seed(0)
    correct = {t: 0 for t in CLASSIFY_TIMESTEPS}
    for i in range(clips):
        spec = data.specs[i]
        true = getattr(spec, word)
        z = encode_clips(pipe.vae, data[i]["video"][None])  # (1, 4, f, h, w)
        batch = z.expand(len(choices), -1, -1, -1, -1)  # the clip once per caption
        words = caption(spec).split(" ")
        captions = [" ".join(other if w == true else w for w in words) for other in choices]
        context = _context(pipe, captions)  # (len(choices), tokens, dim)
        for t in CLASSIFY_TIMESTEPS:
            timestep = torch.full((len(choices),), t)
            loss = torch.zeros(len(choices))
            for _ in range(2):
                noise = torch.randn(z.shape, generator=generator).expand(len(choices), -1, -1, -1, -1)
                noisy, target = scheduler.add_noise(batch, noise, timestep), scheduler.get_velocity(batch, noise, timestep)
                pred = pipe.unet(noisy, timestep, encoder_hidden_states=context).sample
                loss += (pred - target).pow(2).mean(dim=(1, 2, 3, 4))
            correct[t] += choices[int(loss.argmin())] == true
    print(f"| timestep | {word} picked by the lowest loss (chance {1 / len(choices):.0%}) |")
    print("|---|---|")
    for t in CLASSIFY_TIMESTEPS:
        print(f"| {t} | {correct[t] / clips:.0%} ({correct[t]}/{clips}) |")


SWAP_TIMESTEPS = (999, 900, 800, 500)


def word_swap(pipe: TextToVideoSDPipeline, draws: int) -> None:
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    spec = ShapeSpec("red", "circle", "left", start=(1.0, 0.5))
    z = encode_clips(pipe.vae, clip_to_tensor(render_clip(spec))[None])  # (1, 4, f, h, w)
    captions = [BASE, *CHANGED, ""]
    context = _context(pipe, captions)  # (len(captions), tokens, dim)
    generator = torch.Generator().manual_seed(0)
    change = {t: torch.zeros(len(captions) - 1) for t in SWAP_TIMESTEPS}
    for t in SWAP_TIMESTEPS:
        timestep = torch.full((len(captions),), t)
        for _ in range(draws):
            noise = torch.randn(z.shape, generator=generator)
            noisy = scheduler.add_noise(z, noise, timestep[:1]).expand(len(captions), -1, -1, -1, -1)
            out = pipe.unet(noisy, timestep, encoder_hidden_states=context).sample  # (len(captions), 4, f, h, w)
            change[t] += ((out[1:] - out[:1]).flatten(1).norm(dim=1) / out[0].norm()) / draws
    print(f"| caption (from \"{BASE}\") | " + " | ".join(f"t = {t}" for t in SWAP_TIMESTEPS) + " |")
    print("|---|" + "---|" * len(SWAP_TIMESTEPS))
    for i, text in enumerate(captions[1:]):
        print(f"| {text or '(empty)'} | " + " | ".join(f"{change[t][i]:.1%}" for t in SWAP_TIMESTEPS) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("text-encoder", "caption-loss", "layout", "vae", "latent-colours",
                                         "classify", "word-swap"))
    parser.add_argument("model", help="pipeline folder")
    parser.add_argument("--scale", action="append", default=[], metavar="WORD=S",
                        help="text-encoder: scale WORD's token embedding by S first (repeatable)")
    parser.add_argument("--start-spread", type=float, default=0.1, help="data for caption-loss, layout and classify")
    parser.add_argument("--trail", type=int, default=0, help="data for caption-loss and layout")
    parser.add_argument("--draws", type=int, default=None,
                        help="noise draws averaged: layout (default 32), word-swap (default 4)")
    parser.add_argument("--clips", type=int, default=None,
                        help="vae: rendered clips reconstructed (default 100); classify: clips (default 24)")
    parser.add_argument("--word", choices=tuple(WORDS), default="colour", help="classify: the word swapped")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.draws is not None and args.draws < 1:
        parser.error(f"--draws must be >= 1, got {args.draws}")
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be >= 1, got {args.clips}")
    if args.trail < 0:
        parser.error(f"--trail must be >= 0, got {args.trail}")
    scales = {}
    for item in args.scale:
        word, sep, value = item.partition("=")
        try:
            if not (sep and word):
                raise ValueError(item)
            scales[word] = float(value)
        except ValueError:
            parser.error(f"--scale takes WORD=S with S a number, got {item!r}")
    pipe = TextToVideoSDPipeline.from_pretrained(args.model)
    with torch.no_grad():
        if args.what == "text-encoder":
            text_encoder(pipe, scales)
        elif args.what == "vae":
            vae(pipe, args.clips or 100)
        elif args.what == "classify":
            classify(pipe, args.word, args.clips or 24, args.start_spread)
        elif args.what == "latent-colours":
            latent_colours(pipe)
        elif args.what == "word-swap":
            word_swap(pipe, args.draws or 4)
        elif args.what == "caption-loss":
            caption_loss(pipe, args.start_spread, args.trail)
        else:
            layout(pipe, args.start_spread, args.trail, args.draws or 32)


if __name__ == "__main__":
    main()

"""Gaussian noise for diffusion: one random draw helper shared by the pipeline and the schedulers,
and the initial latents of a video, independent or decomposed as in VideoFusion.

Determinism contract: with a list of generators (one per video), video ``i`` draws only from
``generator[i]``, so the same seed gives the same video whatever the batch size or the number of
workers. A single generator draws the whole batch at once (diffusers' behaviour, kept for parity).
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import torch

Generator = Union[torch.Generator, Sequence[torch.Generator], None]

NOISE_MODES = ("independent", "decomposed")


def randn(shape: Sequence[int], generator: Generator = None, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None) -> torch.Tensor:
    """Standard normal tensor of ``shape`` on ``device``, bit-identical to diffusers' ``randn_tensor``.

    Drawn on the generator's device (a CPU generator gives the same numbers on every machine), then
    moved. A list of generators draws row ``i`` of dim 0 from ``generator[i]``; its length must equal
    ``shape[0]`` (a list of one acts like a single generator).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if isinstance(generator, (list, tuple)):
        if len(generator) == 1:
            generator = generator[0]
        elif len(generator) != shape[0]:
            raise ValueError(f"generator: a list of {len(generator)} generators was passed for a batch "
                             f"of {shape[0]}; pass one generator per video or a single generator")
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    gen_device = gens[0].device if gens[0] is not None else device
    if gen_device.type != device.type and gen_device.type != "cpu":
        raise ValueError(f"generator: a {gen_device.type} generator cannot make a {device.type} tensor; "
                         f"use a CPU generator or one on {device.type}")
    if isinstance(generator, (list, tuple)):
        rows = [torch.randn((1, *shape[1:]), generator=g, device=gen_device, dtype=dtype) for g in generator]
        return torch.cat(rows).to(device)
    return torch.randn(tuple(shape), generator=generator, device=gen_device, dtype=dtype).to(device)


def initial_latents(shape: Sequence[int], generator: Generator = None,
                    device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                    noise: str = "independent", noise_ratio: float = 0.5) -> torch.Tensor:
    """Initial noise for latents of ``shape`` ``(batch, channels, num_frames, height, width)``.

    ``noise="independent"``: every frame draws its own noise (standard diffusion).
    ``noise="decomposed"``: VideoFusion's decomposed noise (Luo et al. 2023, eq. 6): each frame's noise is
    ``sqrt(noise_ratio) * base + sqrt(1 - noise_ratio) * residual_i``, ``base`` shared by all frames
    of a video. Still unit variance per element; frames are correlated with coefficient ``noise_ratio``.
    ``noise_ratio`` in [0, 1]; 0 gives independent noise (but a different draw).
    """
    if noise not in NOISE_MODES:
        raise ValueError(f"noise: {noise!r} is not one of {list(NOISE_MODES)}")
    if noise == "independent":
        return randn(shape, generator, device, dtype)
    if not 0.0 <= noise_ratio <= 1.0:
        raise ValueError(f"noise_ratio: must be in [0, 1], got {noise_ratio}")
    b, c, f, h, w = shape
    # one draw per video holds base then residual, so video i depends on generator[i] alone
    flat = randn((b, c * (1 + f) * h * w), generator, device, dtype)
    base = flat[:, : c * h * w].reshape(b, c, 1, h, w)  # (b, c, 1, h, w), shared over frames
    residual = flat[:, c * h * w:].reshape(b, c, f, h, w)  # (b, c, f, h, w)
    return math.sqrt(noise_ratio) * base + math.sqrt(1.0 - noise_ratio) * residual

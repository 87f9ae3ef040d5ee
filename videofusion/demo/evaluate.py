"""``videofusion eval-demo``: how well a moving-shapes model follows its prompts, read from the pixels of the
videos it generates (:mod:`videofusion.demo.evaluation`)."""
from __future__ import annotations

import os
from typing import Any

import torch
from tqdm.auto import tqdm

from ..long_video import LongVideo
from ..pipelines import DiffusionPipeline
from ..settings import GenerationSettings
from . import DEMO_DEFAULTS, DEMO_MODEL_PATH
from .evaluation import check_extra_colours, score_clip, summarise
from .shapes import DIRECTIONS, SHAPES, ShapeSpec, caption, combos

SPLITS = ("seen", "heldout", "extra")


def evaluate_demo(model: str | None = None, seeds: int = 2, heldout_seeds: int = 4, max_combos: int | None = None,
                  batch_size: int = 8, num_frames: int = 16, num_inference_steps: int | None = None,
                  guidance_scale: float | None = None, noise: str | None = None,
                  noise_ratio: float | None = None, long_video: LongVideo | None = None, progress: bool = True,
                  loras: list[tuple[Any, float]] | None = None, extra_colours: list[str] | tuple[str, ...] = (),
                  extra_seeds: int = 4) -> dict:
    """Prompt adherence of a moving-shapes model, read from the generated pixels.

    Generates ``"a <colour> <shape> moving <direction>"`` for the training combinations (``seeds``
    seeds each, at most ``max_combos`` of them, spread evenly) and for every held-out combination
    (``heldout_seeds`` seeds each), scores each video with :func:`videofusion.demo.evaluation.score_clip`
    and returns ``{"seen": {...accuracies}, "heldout": {...}, "videos": [...]}``. Video ``k`` of a
    split uses seed ``k``, so runs are reproducible and comparable between models. ``num_frames`` and
    ``long_video`` (a :class:`videofusion.long_video.LongVideo`, or None) go to every call, e.g. 64
    frames with and without the long-video option to measure its coherence: videos longer than the
    16 trained frames are also scored per 16-frame segment (``"segment_direction"``, ``"segment_still"``
    in each split's summary). ``num_inference_steps`` and ``guidance_scale`` default to the demo's
    (25 and 7.5).

    ``loras``: ``(LoRA, scale)`` pairs, a LoRA being a path or Hub id or what
    :func:`videofusion.adapters.load_lora` returns, loaded as ``lora_0``, ``lora_1``, ... (as ``generate --lora``).
    ``extra_colours`` (names from :data:`~videofusion.demo.shapes.EXTRA_COLOURS`, e.g. ``["orange"]``, colours
    the demo model never saw, taught by a LoRA) adds the split ``"extra"``: every shape and direction in each of
    them (``"an orange circle moving left"``), ``extra_seeds`` seeds each; every video of every split is then
    classified among :data:`~videofusion.demo.shapes.COLOURS` and these colours (without them: among
    ``COLOURS`` only, and there is no ``"extra"`` split).
    """
    extra_colours = list(check_extra_colours(extra_colours))  # checked before the model loads
    model = model or str(DEMO_MODEL_PATH)
    given = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, noise=noise,
                 noise_ratio=noise_ratio, long_video=long_video)
    settings = {**DEMO_DEFAULTS, "num_frames": num_frames, **{k: v for k, v in given.items() if v is not None}}
    GenerationSettings(**settings)  # checked before the model loads
    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if loras:
        from ..adapters import load_lora
        names = [pipe.lora.load(load_lora(lora) if isinstance(lora, (str, os.PathLike)) else lora, f"lora_{i}")
                 for i, (lora, _) in enumerate(loras)]
        pipe.set_adapters(names, [scale for _, scale in loras])
    jobs = []
    for split, n_seeds in (("seen", seeds), ("heldout", heldout_seeds)):
        options = combos("train" if split == "seen" else "heldout")
        if max_combos is not None and split == "seen" and len(options) > max_combos:
            options = [options[round(i * len(options) / max_combos)] for i in range(max_combos)]
        jobs += [(split, f"a {c} {s} moving {d}") for c, s, d in options for _ in range(n_seeds)]
    for colour in extra_colours:  # caption() writes "an orange ..."
        jobs += [("extra", caption(ShapeSpec(colour, s, d))) for s in SHAPES for d in DIRECTIONS
                 for _ in range(extra_seeds)]
    seeds_used = dict.fromkeys(SPLITS, 0)
    results = []
    bar = tqdm(total=len(jobs), desc="eval-demo", disable=not progress)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        generators = []
        for split, _ in chunk:
            generators.append(torch.Generator().manual_seed(seeds_used[split]))
            seeds_used[split] += 1
        frames = pipe([p for _, p in chunk], generator=generators, **settings).frames
        for (split, prompt), video, g in zip(chunk, frames, generators):
            scored = score_clip(video, prompt, segment_frames=DEMO_DEFAULTS["num_frames"], extra_colours=extra_colours)
            results.append({"split": split, "prompt": prompt, "seed": g.initial_seed(), **scored})
        bar.update(len(chunk))
    bar.close()
    splits = SPLITS if extra_colours else SPLITS[:2]
    report = {split: summarise([r for r in results if r["split"] == split]) for split in splits}
    report["settings"] = {k: v for k, v in settings.items()}
    report["model"] = model
    report["extra_colours"] = extra_colours
    report["videos"] = results
    return report

"""The original ModelScope text-to-video release folder -> our components, converted in memory.

The folder holds ``configuration.json`` (``model.model_cfg``: the UNet's settings and the diffusion's;
``model.model_args``: the file of each part) and three weight files::

    text2video_pytorch_model.pth   the UNet (zeroscope v2's original UNet files share its layout)
    VQGAN_autoencoder.pth          the autoencoder, inside a whole latent-diffusion checkpoint
    open_clip_pytorch_model.bin    OpenCLIP ViT-H-14; the pipeline reads its text tower's penultimate layer

:func:`load_release` checks everything it can before the heavy work: the configuration, that every part's
file is there, that each file holds its own part (not another's), and that every file's keys and shapes
match the model it must fill (files are memory-mapped: no tensor is read for this). Only then are the
tensors assigned, and cast to the dtype asked for. Files load with ``torch.load(weights_only=True)`` only:
a file that would run pickle code is refused.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ..io.files import MODEL_INDEX
from ..io.loading import assign_state_dict, check_dtype
from .keys import check_sources, first, take_sources
from .text import empty_text_encoder, file_layers, is_unused, text_config
from .tokenizer import clip_tokenizer
from .unet import empty_unet, unet_config
from .vae import autoencoder_weights, empty_vae, vae_config

CONFIGURATION = "configuration.json"
# part -> (its key in model_args, the released file name, what it is)
PARTS = {"unet": ("ckpt_unet", "text2video_pytorch_model.pth", "the UNet"),
         "vae": ("ckpt_autoencoder", "VQGAN_autoencoder.pth", "the autoencoder"),
         "text_encoder": ("ckpt_clip", "open_clip_pytorch_model.bin", "the OpenCLIP text encoder")}
# key prefixes that say which part a file holds
SIGNATURES = {"unet": ("input_blocks.", "middle_block.", "output_blocks."),
              "vae": ("first_stage_model.", "encoder.down.", "decoder.up."),
              "text_encoder": ("token_embedding.", "transformer.resblocks.")}
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}  # the original's mean_type


@dataclass(frozen=True)
class OriginalRelease:
    """An original release folder, read: ``model_cfg`` from its configuration, ``files`` by part."""

    folder: Path
    model_cfg: dict
    files: dict[str, Path]


def is_original_release(path: str | os.PathLike) -> bool:
    """True for a folder with ``configuration.json`` and no ``model_index.json`` (not a diffusers folder)."""
    folder = Path(path).expanduser()
    return folder.is_dir() and (folder / CONFIGURATION).is_file() and not (folder / MODEL_INDEX).exists()


def read_release(path: str | os.PathLike) -> OriginalRelease:
    """Read ``configuration.json``: the UNet's ``model_cfg`` and each part's file name (``model_args``, the
    released names by default). ValueError naming the file when it is not a text-to-video configuration."""
    folder = Path(path).expanduser()
    source = folder / CONFIGURATION
    try:
        config = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {CONFIGURATION}, so not an original release folder; it holds "
                                f"{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else 'nothing'}") \
            from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{source} is not valid JSON: {e}") from None
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("model_cfg"), dict):
        raise ValueError(f"{source}: not the ModelScope text-to-video configuration (it needs model.model_cfg, "
                         f"as in damo-vilab/modelscope-damo-text-to-video-synthesis); top-level keys: "
                         f"{sorted(config) if isinstance(config, dict) else type(config).__name__}")
    args = model.get("model_args") if isinstance(model.get("model_args"), dict) else {}
    files = {}
    for part, (key, default, _) in PARTS.items():
        name = args.get(key, default)
        if not isinstance(name, str) or not name or os.path.basename(name) != name:
            raise ValueError(f"{source}: model.model_args.{key} must be a file name in {folder}, got {name!r}")
        files[part] = folder / name
    return OriginalRelease(folder, model["model_cfg"], files)


def scheduler_config(model_cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """diffusers' ``DDIMScheduler`` config (the published folder's) for the original diffusion: its step
    count (``num_timesteps``), its prediction (``mean_type``) and its beta schedule (``linear_sd``: linear in
    the square roots of the betas from 0.00085 to 0.012, diffusers' ``scaled_linear``)."""
    steps = model_cfg.get("num_timesteps", 1000)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{source}: model.model_cfg.num_timesteps must be a positive integer, got {steps!r}")
    mean_type = model_cfg.get("mean_type", "eps")
    if mean_type not in PREDICTIONS:
        raise ValueError(f"{source}: model.model_cfg.mean_type must be one of {sorted(PREDICTIONS)} (what the "
                         f"model predicts), got {mean_type!r}")
    schedule = model_cfg.get("beta_schedule", "linear_sd")
    if schedule != "linear_sd":
        raise ValueError(f"{source}: model.model_cfg.beta_schedule must be 'linear_sd', got {schedule!r}")
    betas = [model_cfg.get(key, default) for key, default in (("init_beta", 0.00085), ("last_beta", 0.012))]
    if not all(isinstance(b, (int, float)) and 0 < b < 1 for b in betas):
        raise ValueError(f"{source}: model.model_cfg.init_beta / last_beta must be numbers in (0, 1), got {betas}")
    return {"_class_name": "DDIMScheduler", "beta_end": betas[1], "beta_schedule": "scaled_linear",
            "beta_start": betas[0], "clip_sample": False, "clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995,
            "num_train_timesteps": steps, "prediction_type": PREDICTIONS[mean_type], "sample_max_value": 1.0,
            "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "thresholding": False,
            "trained_betas": None}


def read_original_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an original ``.pth`` / ``.bin`` file (a checkpoint's ``state_dict`` entry when it has
    one), memory-mapped where the file allows: ``torch.load(weights_only=True)``, so no pickle code runs.
    ValueError naming the file when it would need pickle code execution, or is unreadable."""
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        text = str(e)
        if "weights only" in text.lower() or "weights_only" in text:
            found = re.search(r"Unsupported (?:global|operand)[^\n]*", text)
            what = found[0].strip() if found else "it holds more than tensors"
            raise ValueError(f"{path}: refused: loading it would run pickle code ({what}); only files of plain "
                             "tensors load (torch.load(weights_only=True)). Re-save its state dict from a Python "
                             "session you trust") from None
        raise ValueError(f"cannot read {path}: {type(e).__name__}: {text.splitlines()[0] if text else ''}") from None
    except Exception as e:
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read {path}: it is truncated or not a torch file ({type(e).__name__}: "
                         f"{cause})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]  # a training checkpoint: the weights are under "state_dict"
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:
        raise ValueError(f"{path}: holds no tensors (a {type(loaded).__name__}), so it is not a weight file")
    return tensors


def identify(keys: Iterable[str]) -> str | None:
    """The part (``unet``, ``vae``, ``text_encoder``) whose keys a file holds, or None."""
    keys = list(keys)
    for part, prefixes in SIGNATURES.items():
        if any(k.startswith(prefixes) for k in keys):
            return part
    return None


def _check_part(part: str, path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """ValueError when the file given for ``part`` holds another part's weights, or none of this one's."""
    key, _, what = PARTS[part]
    found = identify(state_dict)
    if found == part:
        return
    given = f"{path} (model_args.{key}: {what})"
    names = ", ".join(f"{w} {n}" for _, n, w in PARTS.values())
    if found is not None:
        example = next(k for k in state_dict if k.startswith(SIGNATURES[found]))
        raise ValueError(f"{given} holds {PARTS[found][2]}'s weights (keys such as {example}), not {what}'s; the "
                         f"release's files are: {names}")
    hint = " (a diffusers-layout file: load its diffusers folder instead)" if any(
        k.startswith(("down_blocks.", "up_blocks.", "text_model.")) for k in state_dict) else ""
    raise ValueError(f"{given} holds none of {what}'s keys ({', '.join(p + '*' for p in SIGNATURES[part])}); its "
                     f"first keys: {first(sorted(state_dict))}{hint}")


def _dtypes(torch_dtype: torch.dtype | Mapping[str, torch.dtype | None] | None) -> dict[str, torch.dtype | None]:
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype):
        check_dtype(torch_dtype)
        return {part: torch_dtype for part in PARTS}
    dtypes = {part: torch_dtype.get(part, torch_dtype.get("default")) for part in PARTS}
    for dtype in dtypes.values():
        check_dtype(dtype)
    return dtypes


def load_release(path: str | os.PathLike, *,
                 torch_dtype: torch.dtype | Mapping[str, torch.dtype | None] | None = None,
                 tokenizer: Any = None, skip: Iterable[str] = (), vae_scale_factor: int = 8) -> dict[str, Any]:
    """Convert an original release folder in memory: ``{"unet", "vae", "text_encoder", "tokenizer"}`` (our UNet
    and autoencoder, transformers' ``CLIPTextModel`` and ``CLIPTokenizer``, in eval mode) and
    ``"scheduler_config"`` (diffusers' DDIMScheduler config dict).

    ``torch_dtype``: one dtype for every model, or a dict by part with an optional ``"default"``; ``None``
    gives float32 whatever the files hold, as diffusers does. ``tokenizer``: a tokenizer to use instead of
    one built from OpenCLIP's vocabulary (see :mod:`videofusion.convert.tokenizer`). ``skip``: parts not to
    convert (their files need not exist); ``vae_scale_factor`` then stands for a skipped autoencoder's in the
    UNet's ``sample_size``. Raises FileNotFoundError for a missing part, ValueError for a file of the wrong
    part, a file that does not match the configuration, or a refused file, naming the file, before any
    tensor is read.
    """
    release = read_release(path)
    source = str(release.folder / CONFIGURATION)
    skip = set(skip)
    unknown = skip - set(PARTS) - {"tokenizer", "scheduler"}
    if unknown:
        raise ValueError(f"skip: unknown parts {sorted(unknown)}; parts are {sorted(PARTS)}, tokenizer, scheduler")
    dtypes = _dtypes(torch_dtype)
    parts = [p for p in PARTS if p not in skip]
    out: dict[str, Any] = {"scheduler_config": scheduler_config(release.model_cfg, source)}
    for part in parts:  # 1. every file there, before reading any
        if not release.files[part].is_file():
            key, default, what = PARTS[part]
            raise FileNotFoundError(f"{release.folder}: {what}'s file {release.files[part].name} (model_args.{key}) is "
                                    f"missing; the folder holds {sorted(p.name for p in release.folder.iterdir())}")
    if "tokenizer" not in skip:
        out["tokenizer"] = tokenizer if tokenizer is not None else clip_tokenizer()

    # 2. each file memory-mapped and checked against the model it fills
    weights = {part: read_original_weights(release.files[part]) for part in parts}
    for part in parts:
        _check_part(part, release.files[part], weights[part])
    models, tables, relevant = {}, {}, {}
    if "vae" in weights:
        weights["vae"] = autoencoder_weights(weights["vae"])
        config = vae_config(weights["vae"], str(release.files["vae"]))
        models["vae"], tables["vae"] = empty_vae(config)
        vae_scale_factor = models["vae"].config.scale_factor
    if "unet" in weights:
        config = unet_config(release.model_cfg, source, vae_scale_factor)
        try:
            models["unet"], tables["unet"] = empty_unet(config)
        except ValueError as e:
            raise ValueError(f"{source}: model.model_cfg gives a UNet the diffusers layout cannot hold: {e}") from None
    if "text_encoder" in weights:
        layers = file_layers(weights["text_encoder"])
        config = text_config(weights["text_encoder"], str(release.files["text_encoder"]))
        models["text_encoder"], tables["text_encoder"] = empty_text_encoder(config)
        relevant["text_encoder"] = lambda k: not is_unused(k, layers)
    against = {"unet": f"the UNet {CONFIGURATION}'s model.model_cfg describes",
               "vae": "the autoencoder its own shapes describe (block 0 of each level)",
               "text_encoder": "the text tower its own shapes describe"}
    for part in parts:
        check_sources(weights[part], tables[part], str(release.files[part]), against[part],
                      relevant.get(part, lambda k: True))

    # 3. the heavy part: tensors assigned (cast where the dtype differs)
    for part in parts:
        assign_state_dict(models[part], take_sources(weights[part], tables[part]), dtypes[part],
                          source=str(release.files[part]))
        out[part] = models[part].eval()
    return out

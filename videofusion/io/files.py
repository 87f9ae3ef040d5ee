"""Checkpoint folders in diffusers' format: file names, variants, shards, safetensors and .bin.

A model folder holds ``config.json`` and its weights under one of these names (the names are the
format; diffusers writes and reads exactly these)::

    diffusion_pytorch_model.safetensors                     plain
    diffusion_pytorch_model.fp16.safetensors                variant "fp16"
    diffusion_pytorch_model.fp16-00001-of-00002.safetensors shard 1 of 2 of variant "fp16", listed by
    diffusion_pytorch_model.safetensors.index.fp16.json     the index ("weight_map": key -> shard file)
    diffusion_pytorch_model[.fp16].bin                      the same in torch pickle format

plus the legacy variant spellings ``...-00001-of-00002.fp16.safetensors`` and
``....safetensors.fp16.index.json``. transformers' folders use the stems ``model`` (safetensors)
and ``pytorch_model`` (bin) the same way. A pipeline folder holds ``model_index.json`` and one
subfolder per component.

This module reads those names and files; :mod:`videofusion.io.hub` finds a folder for a Hub id,
:mod:`videofusion.io.loading` builds a model from a folder, :mod:`videofusion.io.saving` writes one.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

DIFFUSERS_VERSION = "0.42.1"  # written into config.json so diffusers loads our folders without complaint
MODEL_INDEX = "model_index.json"
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")  # diffusers' and transformers' names
FORMATS = ("safetensors", "bin")  # in order of preference
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece models

_SHARD = r"-\d{5}-of-\d{5}"
_WEIGHT_RE = re.compile(
    rf"(?P<stem>\w+)(?:\.(?P<variant>\w+))?(?P<shard>{_SHARD})?(?:\.(?P<legacy>\w+))?\.(?P<ext>safetensors|bin)")
_INDEX_RE = re.compile(
    r"(?P<stem>\w+)\.(?P<ext>safetensors|bin)(?:\.(?P<legacy>\w+))?\.index(?:\.(?P<variant>\w+))?\.json")


class MissingWeightsError(FileNotFoundError, ValueError):
    """A folder has no weight files of the name and variant asked for: an OSError (FileNotFoundError), as
    diffusers raises there, and a ValueError, as videofusion raised before."""


# ---------------------------------------------------------------------------------------------- file names


@dataclass(frozen=True)
class WeightFile:
    """What a weight file name says: ``stem[.variant][-0000i-of-0000n].ext`` or an index json."""

    name: str
    stem: str  # "diffusion_pytorch_model", "model", "pytorch_model", ...
    variant: str | None  # "fp16", ... or None
    ext: str  # "safetensors" or "bin"
    kind: str  # "single", "shard" or "index"


def parse_weight_name(name: str) -> WeightFile | None:
    """Parse a weight file's base name; ``None`` for any other file (configs, ``.onnx``, ``.pth``, ...)."""
    m = _INDEX_RE.fullmatch(name)
    kind = "index"
    if m is None:
        m = _WEIGHT_RE.fullmatch(name)
        kind = "shard" if m and m["shard"] else "single"
    if m is None or (m["variant"] and m["legacy"]):
        return None
    return WeightFile(name, m["stem"], m["variant"] or m["legacy"], m["ext"], kind)


def select_weight_files(names: Iterable[str], variant: str | None,
                        stems: Iterable[str] = WEIGHT_STEMS) -> list[str]:
    """Of one folder's file names, the weight files that make up ``variant``, in the preferred format.

    safetensors wins over bin when the variant exists in both. Only the given ``stems`` count
    (diffusers' and transformers' weight names by default, so ``open_clip_pytorch_model.bin`` and
    such are never picked). Returns every file of that format and variant (single file, shards and
    index), sorted; ``[]`` when the folder has no weights of that variant.
    """
    stems = set(stems)
    parsed = [w for w in map(parse_weight_name, names) if w and w.stem in stems and w.variant == variant]
    for ext in FORMATS:
        chosen = sorted(w.name for w in parsed if w.ext == ext)
        if chosen:
            return chosen
    return []


def _weight_names(names: Iterable[str], stems: Iterable[str] = WEIGHT_STEMS) -> list[str]:
    stems = set(stems)
    return sorted(n for n in names if (w := parse_weight_name(n)) and w.stem in stems)


def check_variant(variant: str | None) -> None:
    if variant is not None and not (isinstance(variant, str) and re.fullmatch(r"\w+", variant)):
        raise ValueError(f"variant: expected None or a name such as 'fp16' (letters, digits, '_'), got {variant!r}")


# ----------------------------------------------------------------------------------------- folder files


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def component_folder(root: str | os.PathLike, subfolder: str | None = None) -> Path:
    """``root/subfolder`` (or ``root``), which must exist: FileNotFoundError naming it and what ``root`` holds."""
    root = Path(root)
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder} (subfolder={subfolder!r}); {root} holds {_listing(root)}")
    return folder


def read_json(folder: str | os.PathLike, name: str) -> dict:
    """``folder/name`` parsed; FileNotFoundError naming the folder and its files, ValueError if malformed."""
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(f"no {name} in {folder} (it holds {_listing(Path(folder))})")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_model_index(folder: str | os.PathLike) -> dict:
    """A pipeline folder's ``model_index.json`` (``_class_name`` plus ``component: [library, class]``)."""
    if not (Path(folder) / MODEL_INDEX).is_file() and (Path(folder) / "config.json").is_file():
        raise FileNotFoundError(f"no {MODEL_INDEX} in {folder}: it holds a single model (config.json), "
                                "not a pipeline; load it with the model class's from_pretrained")
    return read_json(folder, MODEL_INDEX)


def find_weights(folder: str | os.PathLike, weights_name: str = "diffusion_pytorch_model",
                 variant: str | None = None) -> list[Path]:
    """The weight files of ``weights_name`` (a stem) and ``variant`` in ``folder``, safetensors preferred.

    One file, or the shards listed by the index json's ``weight_map`` (in file order).
    :class:`MissingWeightsError` (an OSError and a ValueError) when the variant is absent, listing the weight
    files that are there; ValueError when an index names a path; FileNotFoundError when a shard listed by
    the index is missing.
    """
    check_variant(variant)
    folder = Path(folder)
    names = _listing(folder)
    chosen = [parse_weight_name(n) for n in select_weight_files(names, variant, stems=[weights_name])]
    if not chosen:
        there = _weight_names(names, stems=[weights_name]) or _weight_names(names)
        raise MissingWeightsError(f"no {weights_name} weights of variant {variant!r} in {folder}; weight files "
                                  f"there: {there}" + ("" if variant else " (pass variant= to load one of those)"))
    index = [w for w in chosen if w.kind == "index"]
    if index:
        return _shards_of(folder / index[0].name)
    single = [w for w in chosen if w.kind == "single"]
    if single:
        return [folder / single[0].name]
    raise ValueError(f"{folder} has shards {[w.name for w in chosen]} but no index json listing them")


def _shards_of(index_path: Path) -> list[Path]:
    weight_map = read_json(index_path.parent, index_path.name).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: no 'weight_map' (tensor name -> shard file)")
    files = sorted(set(weight_map.values()))
    for name in files:
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"{index_path}: shard name {name!r} must be a plain file name in that folder")
        if not (index_path.parent / name).is_file():
            raise FileNotFoundError(f"{index_path.parent}: shard {name} listed in {index_path.name} is missing")
    return [index_path.parent / n for n in files]


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """One weight file as a CPU state dict, memory-mapped: ``.safetensors`` zero-copy, ``.bin`` via
    ``torch.load(weights_only=True, mmap=True)`` (no pickle code runs). ValueError naming the file
    when it is truncated or corrupt."""
    state_dict = read_tensors(path)
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} is not a state dict (a dict of tensor name -> tensor)")
    return state_dict


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """A weight file's tensors as saved: a dict of name -> tensor, or a list of tensors (``torch.save`` of a
    list, as keyless LoRA files are), on the CPU; read as :func:`read_weights` does."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read weights file {path}: it is truncated or corrupt (or, for .bin, holds "
                         f"more than tensors); delete it and download or save it again "
                         f"({type(e).__name__}: {cause})") from e
    tensors = saved.values() if isinstance(saved, dict) else saved if isinstance(saved, (list, tuple)) else None
    if tensors is None or not all(isinstance(v, torch.Tensor) for v in tensors):
        raise ValueError(f"{path} holds neither a state dict (a dict of tensor name -> tensor) nor a list of "
                         f"tensors")
    return list(saved) if isinstance(saved, tuple) else saved


def load_state_dict(folder: str | os.PathLike, weights_name: str = "diffusion_pytorch_model",
                    variant: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of ``weights_name``/``variant`` in ``folder`` (every shard), memory-mapped on CPU."""
    state_dict: dict[str, torch.Tensor] = {}
    for path in find_weights(folder, weights_name, variant):
        state_dict.update(read_weights(path))
    return state_dict

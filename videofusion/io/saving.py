"""Writing files and folders atomically (a temp file or folder beside the target, then ``os.replace``),
and saving models in diffusers' layout: an interrupted write never leaves a truncated file behind."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .loading import DIFFUSERS_VERSION, _listing, check_variant, parse_weight_name


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Run ``write(tmp)`` on a temporary path in ``path``'s folder, then ``os.replace`` it onto ``path``:
    readers see the old file or the whole new one, never half of it. The temporary file is removed
    if ``write`` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Build a folder in a temporary folder beside ``path`` (yielded as a Path), then swap it in as
    ``path``: a build that raises or is interrupted leaves ``path`` as it was (absent, or the old
    folder whole) and removes the temporary folder. An old folder at ``path`` is replaced as a whole."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.old")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():  # moved aside, the new one not in place: put it back
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_model(model: nn.Module, save_directory: str | os.PathLike, variant: str | None = None,
               safe_serialization: bool = True, max_shard_size: int | str | None = None) -> None:
    """Write ``config.json`` and the weights of a :class:`~videofusion.models.config.PretrainedModel`, atomically,
    as diffusers' ``save_pretrained`` does (so ``diffusers.<Class>.from_pretrained(dir, variant=...)`` loads it).

    ``max_shard_size`` (bytes, or a string such as ``"5GB"``) splits the weights into shards
    ``<stem>[.variant]-0000i-of-0000n.<ext>`` plus an index json; ``None`` writes one file. Weight
    files of the same stem and variant left by an earlier save (other format, other sharding)
    are removed, so the folder holds one unambiguous checkpoint per variant.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    from ..models.config import config_to_dict

    check_variant(variant)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"_class_name": type(model).__name__, "_diffusers_version": DIFFUSERS_VERSION,
              **config_to_dict(model.config)}
    atomic_write_text(folder / model.config_name, json.dumps(config, indent=2, sort_keys=True) + "\n")

    stem, ext = model.weights_name, ("safetensors" if safe_serialization else "bin")
    pattern = f"{stem}{'.' + variant if variant else ''}{{suffix}}.{ext}"  # diffusers' shard names
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if max_shard_size is None:
        shards = {pattern.format(suffix=""): list(state_dict)}
        index = None
    else:
        split = split_torch_state_dict_into_shards(state_dict, filename_pattern=pattern,
                                                   max_shard_size=max_shard_size)
        shards = split.filename_to_tensors
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename} if split.is_sharded else None
    for name, keys in shards.items():
        shard = {k: state_dict[k] for k in keys}
        if safe_serialization:
            from safetensors.torch import save_file
            atomic_write(folder / name, lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(folder / name, lambda tmp: torch.save(shard, tmp))
    written = set(shards)
    if index is not None:
        index_name = f"{stem}.{ext}.index{'.' + variant if variant else ''}.json"
        atomic_write_text(folder / index_name, json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.add(index_name)
    for name in _listing(folder):  # stale files of this stem and variant from an earlier save
        w = parse_weight_name(name)
        if w and w.stem == stem and w.variant == variant and name not in written:
            (folder / name).unlink()

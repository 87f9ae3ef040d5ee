"""Writing files and folders atomically, and saving models in diffusers' layout.

Every file the project writes (videos, checkpoints, configs, manifests, plots) goes through
:class:`PartialFile`: the data is written to a temporary ``.NAME.<random>.part`` file beside the target,
flushed to disk, then renamed onto the target. Readers see the old file or the whole new one, and an
interrupted run leaves at most a ``.part`` file, never a truncated target; :func:`sweep_partial_files`
removes those where a program knows no other writer is running (``videofusion batch`` holds a lock).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .files import _listing, check_variant, parse_weight_name

PARTIAL_SUFFIX = ".part"  # the temporary files of writes in progress: .NAME.<random>.part


class PartialFile:
    """A temporary file ``.NAME.<random>.part`` beside ``path`` (created empty at once) that becomes
    ``path`` on :meth:`commit` (flushed to disk, then renamed) or disappears on :meth:`discard`. As a
    context manager (``with PartialFile(path) as tmp: ...``) it yields the temporary path and commits when the block ends
    without an exception, else discards. The temporary name has no extension of its own: writers that
    pick a format by extension must be told the format."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
        self.tmp.touch(exist_ok=False)  # fails if the folder is missing; permissions follow the umask

    def commit(self) -> None:
        try:
            fd = os.open(self.tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> str:
        return str(self.tmp)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> None:
    """Run ``write(tmp)`` on a temporary path beside ``path`` and put the result in place atomically
    (see :class:`PartialFile`)."""
    with PartialFile(path) as tmp:
        write(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def sweep_partial_files(folder: str | os.PathLike) -> int:
    """Remove the temporary files that interrupted writes left in ``folder`` (not below it); returns how
    many. Only safe while nothing else writes into ``folder``."""
    stale = list(Path(folder).glob(f".*{PARTIAL_SUFFIX}"))
    for item in stale:
        shutil.rmtree(item, ignore_errors=True) if item.is_dir() else item.unlink(missing_ok=True)
    return len(stale)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike):
    """Build a folder in a temporary folder beside ``path`` (yielded as a Path), then swap it in as
    ``path``: a build that raises or is interrupted leaves ``path`` as it was (absent, or the old
    folder whole) and removes the temporary folder. An old folder at ``path`` is replaced as a whole."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: exists and is not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{PARTIAL_SUFFIX}")
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


def save_model(save_directory: str | os.PathLike, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
               *, config_name: str = "config.json", weights_name: str = "diffusion_pytorch_model",
               variant: str | None = None, safe_serialization: bool = True,
               max_shard_size: int | str | None = None) -> None:
    """Write a model folder as diffusers' ``save_pretrained`` does, every file atomically: ``config``
    as ``config_name`` and ``state_dict`` as ``weights_name[.variant].safetensors`` (or ``.bin``), so
    ``diffusers.<Class>.from_pretrained(dir, variant=...)`` loads it.

    ``max_shard_size`` (bytes, or a string such as ``"5GB"``) splits the weights into shards
    ``<stem>[.variant]-0000i-of-0000n.<ext>`` plus an index json; ``None`` writes one file. Weight
    files of the same stem and variant left by an earlier save (other format, other sharding)
    are removed, so the folder holds one unambiguous checkpoint per variant.
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    check_variant(variant)
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / config_name, json.dumps(dict(config), indent=2, sort_keys=True) + "\n")

    stem, ext = weights_name, ("safetensors" if safe_serialization else "bin")
    pattern = f"{stem}{'.' + variant if variant else ''}{{suffix}}.{ext}"  # diffusers' shard names
    state_dict = {k: v.detach().contiguous() for k, v in state_dict.items()}
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

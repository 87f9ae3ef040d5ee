"""Key tables: where each tensor of our (= diffusers') layout comes from in a foreign checkpoint.

A converter builds one table per model, ``{our key: Source}``, from the model we are about to fill
(built on the meta device, so only names and shapes exist). :func:`check_sources` then compares the
foreign file with the table before any tensor is read: missing, unexpected and wrongly shaped keys
are reported in the foreign file's own names. :func:`take_sources` gives our state dict (views of
the foreign tensors: nothing is copied).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Source:
    """One tensor of ours, read from the foreign file: ``key`` there, holding ``shape`` there; ``take``
    turns it into ours (a view: a 1x1 convolution's trailing dims dropped, a slice of rows), or None."""

    key: str
    shape: tuple[int, ...]
    take: Callable[[Tensor], Tensor] | None = None


def same(key: str, shape: Iterable[int]) -> Source:
    """Our tensor is the foreign ``key`` as it is."""
    return Source(key, tuple(shape))


def squeezed(key: str, shape: Iterable[int], dims: int) -> Source:
    """The foreign ``key`` is a convolution with ``dims`` trailing kernel dims of size 1 (a Conv1d (o, i, 1)
    or a 1x1 Conv2d (o, i, 1, 1)); ours is the Linear weight (o, i)."""
    shape = tuple(shape)
    return Source(key, shape + (1,) * dims, lambda t: t.reshape(shape))  # (o, i, 1[, 1]) -> (o, i)


def rows(key: str, shape: Iterable[int], index: int, parts: int) -> Source:
    """Ours is the ``index``-th of ``parts`` equal row blocks of the foreign ``key`` (a fused q/k/v projection)."""
    shape = tuple(shape)
    n = shape[0]
    return Source(key, (n * parts,) + shape[1:], lambda t: t[index * n:(index + 1) * n])


def first(items: list[str], n: int = 5) -> str:
    """The first ``n`` items, and how many more."""
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_sources(state_dict: Mapping[str, Tensor], table: Mapping[str, Source], path: str, against: str,
                  relevant: Callable[[str], bool] = lambda key: True) -> None:
    """Every source in ``table`` is in ``state_dict`` with its shape, and every ``relevant`` key of
    ``state_dict`` is a source. Otherwise one ValueError naming ``path``, what it was checked ``against``
    (a config, or the model the file's own shapes give) and the first keys of each kind of mismatch."""
    wanted = {s.key: s for s in table.values()}
    missing = [k for k in wanted if k not in state_dict]
    unexpected = [k for k in state_dict if relevant(k) and k not in wanted]
    shapes = [f"{k} {tuple(state_dict[k].shape)} in the file vs {wanted[k].shape} from {against}"
              for k in wanted if k in state_dict and tuple(state_dict[k].shape) != wanted[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{len(shapes)} shape mismatches: {first(shapes, 3)}" if shapes else "",
                    f"{len(missing)} missing keys: {first(missing)}" if missing else "",
                    f"{len(unexpected)} unexpected keys: {first(unexpected)}" if unexpected else ""]
        raise ValueError(f"{path} does not match {against}: " + "; ".join(p for p in problems if p))


def take_sources(state_dict: Mapping[str, Tensor], table: Mapping[str, Source]) -> dict[str, Tensor]:
    """Our state dict from the foreign one (checked first with :func:`check_sources`): views, no copies."""
    out = {}
    for ours, source in table.items():
        tensor = state_dict[source.key]
        out[ours] = source.take(tensor) if source.take is not None else tensor
    return out

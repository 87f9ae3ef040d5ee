"""Loading a model from a diffusers-format folder (or Hub id) without random initialisation.

Loading builds the model with its parameters on the meta device (no memory, no random init:
:func:`empty_parameters`), maps safetensors zero-copy (``mmap``), and assigns the mapped tensors
as the parameters, so load time is about the time to build the module tree and peak memory is
the weights' size at most. The file names are :mod:`videofusion.io.files`'; saving, to the same names,
is :mod:`videofusion.io.saving`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from .files import component_folder, load_state_dict, read_json
from .hub import resolve_pretrained

_meta = threading.local()
_patch_lock = threading.Lock()
_patch_users = 0
_register_parameter = nn.Module.register_parameter


def _register_parameter_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
    _register_parameter(module, name, param)
    if param is not None and getattr(_meta, "active", False) and not param.is_meta:
        module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Modules built inside have every parameter on the meta device: no memory, and the random
    init that follows in ``__init__`` runs on meta tensors, costing nothing. Buffers stay real, so
    non-persistent ones (not in checkpoints) keep their computed values. Like accelerate's
    ``init_empty_weights(include_buffers=False)``, but it only affects the calling thread."""
    global _patch_users
    with _patch_lock:
        if _patch_users == 0:
            nn.Module.register_parameter = _register_parameter_on_meta
        _patch_users += 1
    previous = getattr(_meta, "active", False)
    _meta.active = True
    try:
        yield
    finally:
        _meta.active = previous
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                nn.Module.register_parameter = _register_parameter


# diffusers' pre-0.15 attention blocks (old VAE checkpoints) -> today's names, as diffusers renames on load
_LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_legacy_keys(state_dict: dict[str, torch.Tensor], expected: Mapping[str, Any]) -> None:
    for key in [k for k in state_dict if k not in expected]:
        prefix, _, rest = key.rpartition(".")  # rest: "weight" / "bias"
        module, _, old = prefix.rpartition(".")
        if old in _LEGACY_ATTENTION and f"{module}.{_LEGACY_ATTENTION[old]}.{rest}" in expected:
            state_dict[f"{module}.{_LEGACY_ATTENTION[old]}.{rest}"] = state_dict.pop(key)


def _first(items: list[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def assign_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor],
                      torch_dtype: torch.dtype | None = None, source: str = "the checkpoint") -> None:
    """``model.load_state_dict(state_dict, strict=True, assign=True)`` after casting, with our errors.

    Floating tensors become ``torch_dtype``; with ``torch_dtype=None`` every tensor takes the
    model's own dtype (float32 unless the default dtype was changed), as diffusers does. Missing,
    unexpected and wrongly shaped keys raise one ValueError naming the first few of each.
    """
    expected = model.state_dict(keep_vars=True)
    _rename_legacy_keys(state_dict, expected)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [f"{k} {tuple(v.shape)} in the checkpoint vs {tuple(expected[k].shape)} in the model"
              for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        problems = [f"{len(missing)} missing keys: {_first(missing)}" if missing else "",
                    f"{len(unexpected)} unexpected keys: {_first(unexpected)}" if unexpected else "",
                    f"{len(shapes)} shape mismatches: {_first(shapes, 3)}" if shapes else ""]
        raise ValueError(f"{source} does not fit {type(model).__name__} built from its config: "
                         + "; ".join(p for p in problems if p))
    for k, v in state_dict.items():
        dtype = torch_dtype if torch_dtype is not None and v.is_floating_point() else expected[k].dtype
        state_dict[k] = v.to(dtype)
    model.load_state_dict(state_dict, strict=True, assign=True)


def check_dtype(torch_dtype: Any) -> None:
    """``torch_dtype`` must be None or a floating torch.dtype (TypeError / ValueError otherwise)."""
    if torch_dtype is None:
        return
    if not isinstance(torch_dtype, torch.dtype):
        raise TypeError(f"torch_dtype: expected None or a torch.dtype such as torch.float16, got {torch_dtype!r}")
    if not torch_dtype.is_floating_point:
        raise ValueError(f"torch_dtype: expected a floating dtype (torch.float32, torch.float16, "
                         f"torch.bfloat16, ...), got {torch_dtype}")


def load_model(cls: type, path_or_id: str | os.PathLike, subfolder: str | None = None,
               torch_dtype: torch.dtype | None = None, variant: str | None = None, **hub_kwargs: Any):
    """Load a diffusers-format model folder (or Hub id, see :func:`resolve_pretrained` for ``hub_kwargs``:
    cache_dir, revision, local_files_only) into ``cls`` (a :class:`~videofusion.models.config.PretrainedModel`).

    Reads ``config.json``, builds the model with parameters on the meta device (no random init),
    maps the weights (:func:`find_weights`) and assigns them with strict key checking. dtype as
    diffusers: ``torch_dtype`` if given, else the model's default (float32), whatever the file
    holds: an fp16 file loads as float32 unless ``torch_dtype=torch.float16``. Weights already in
    ``torch_dtype`` stay memory-mapped from the file (private copy-on-write mapping). Returns the
    model in eval mode.
    """
    check_dtype(torch_dtype)
    root = resolve_pretrained(path_or_id, subfolder=subfolder, variant=variant, **hub_kwargs)
    folder = component_folder(root, subfolder)
    config = read_json(folder, cls.config_name)
    state_dict = load_state_dict(folder, cls.weights_name, variant)  # memory-mapped: nothing read yet
    with empty_parameters():
        model = cls(cls.make_config(config))
    named = config.get("_class_name")
    source = f"{folder} (config.json names {named})" if named and named != cls.__name__ else str(folder)
    assign_state_dict(model, state_dict, torch_dtype, source=source)
    return model.eval()

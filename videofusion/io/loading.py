"""Checkpoint folders in diffusers' format: local paths and Hub ids, variants, shards, safetensors and .bin.

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

Loading builds the model with its parameters on the meta device (no memory, no random init:
:func:`empty_parameters`), maps safetensors zero-copy (``mmap``), and assigns the mapped tensors
as the parameters, so load time is about the time to build the module tree and peak memory is
the weights' size at most. Saving, to the same names, is :mod:`videofusion.io.saving`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

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


# --------------------------------------------------------------------------------------- hub resolution


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``), read now, not at import time."""
    from huggingface_hub import constants
    return constants.HF_HUB_OFFLINE or _is_true(os.environ.get("HF_HUB_OFFLINE")) or \
        _is_true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hub cache: ``cache_dir``, else ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's
    default (``~/.cache/huggingface/hub``). The environment is read now, not at import time."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _looks_like_path(s: str) -> bool:
    return (s.startswith((".", "/", "~")) or s.count("/") > 1 or os.path.isabs(s)
            or (os.sep != "/" and os.sep in s))


def cached_snapshot(repo_id: str, revision: str | None = None,
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch, tag or commit; default ``main``) in the
    Hub cache (``models--org--name/refs/<revision>`` -> ``snapshots/<commit>``), or ``None``."""
    storage = hub_cache_dir(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    revision = revision or "main"
    commit = revision
    ref = storage / "refs" / revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _folder_names(repo_files: Iterable[str], folder: str) -> list[str]:
    prefix = f"{folder}/" if folder else ""
    return [f[len(prefix):] for f in repo_files if f.startswith(prefix) and "/" not in f[len(prefix):]]


def _config_names(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.endswith(CONFIG_SUFFIXES) and parse_weight_name(n) is None]


def model_allow_patterns(repo_files: Iterable[str], variant: str | None = None, subfolder: str | None = None,
                         repo: str = "the repo") -> list[str]:
    """The files of one model folder (``subfolder``, or the repo root) that loading it with ``variant``
    needs: its configs and that variant's weights (safetensors preferred). A pure function of the
    repo's file list (``HfApi().list_repo_files``).

    Raises ValueError when the folder has weights but none of ``variant``, listing those it has.
    """
    check_variant(variant)
    folder = (subfolder or "").strip("/")
    names = _folder_names(repo_files, folder)
    weights = select_weight_files(names, variant)
    if not weights and variant is not None and _weight_names(names):
        raise ValueError(f"{repo}/{folder}: no weights of variant {variant!r}; its weight files are "
                         f"{_weight_names(names)}")
    prefix = f"{folder}/" if folder else ""
    return sorted(prefix + n for n in _config_names(names) + weights)


def pipeline_components(model_index: Mapping[str, Any]) -> list[str]:
    """The component names of a ``model_index.json`` dict: keys whose value is ``[library, class]``
    with a class (``[null, null]`` marks an absent optional component)."""
    return sorted(k for k, v in model_index.items()
                  if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2 and v[1] is not None)


def pipeline_allow_patterns(model_index: Mapping[str, Any], repo_files: Iterable[str],
                            variant: str | None = None) -> list[str]:
    """The files a pipeline needs: ``model_index.json`` and, per component folder, its configs and weights.

    As diffusers' ``DiffusionPipeline.download``: each component takes ``variant``'s weights where it
    has them and its plain weights otherwise (say a repo ships an fp16 UNet but one text encoder),
    and a ``variant`` no component has is a ValueError. safetensors is preferred over bin.
    """
    check_variant(variant)
    repo_files = list(repo_files)
    patterns = [MODEL_INDEX]
    found_variant = variant is None
    for name in pipeline_components(model_index):
        names = _folder_names(repo_files, name)
        weights = select_weight_files(names, variant)
        found_variant |= bool(weights)
        weights = weights or select_weight_files(names, None)
        patterns += [f"{name}/{n}" for n in _config_names(names) + weights]
    if not found_variant:
        raise ValueError(f"variant {variant!r}: no component has weights of this variant; weight files are "
                         f"{_weight_names(f for f in repo_files)}")
    return sorted(patterns)


def resolve_pretrained(path_or_id: str | os.PathLike, *, subfolder: str | None = None,
                       variant: str | None = None, cache_dir: str | os.PathLike | None = None,
                       revision: str | None = None, local_files_only: bool | None = None,
                       allow_patterns: list[str] | None = None) -> Path:
    """The local folder for a path or a Hub id (the root: ``subfolder`` only narrows what is downloaded).

    An existing local folder is returned as is. Anything else is a Hub id ("org/name"), downloaded
    into the Hub cache (``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``) with only the files needed:
    ``allow_patterns`` if given, else :func:`model_allow_patterns` for ``subfolder`` (or a model at the
    repo root), else :func:`pipeline_allow_patterns` when the repo has ``model_index.json``.
    Offline (``local_files_only`` or ``HF_HUB_OFFLINE=1``), or when the Hub cannot be reached, the
    cached snapshot is used as is. Raises FileNotFoundError for a missing local path or a repo that
    is not cached while offline, ValueError for a malformed id or a variant the repo lacks.
    """
    check_variant(variant)
    if isinstance(path_or_id, os.PathLike) or (isinstance(path_or_id, str) and _looks_like_path(path_or_id)):
        path = Path(path_or_id).expanduser()
        if path.is_dir():
            return path
        raise FileNotFoundError(f"path_or_id: no such folder {str(path_or_id)!r}")
    if not isinstance(path_or_id, str):
        raise TypeError(f"path_or_id: expected a folder path or a Hub id such as 'org/name', got {path_or_id!r}")
    if os.path.isdir(path_or_id):
        return Path(path_or_id)
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(path_or_id)
    except ValueError as e:
        raise ValueError(f"path_or_id: {path_or_id!r} is neither a local folder nor a Hub id such as "
                         f"'org/name' ({e})") from None
    repo_id = path_or_id
    offline = bool(local_files_only) or hub_offline()
    hub_error: Exception | None = None
    if not offline:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
        try:
            repo_files = HfApi().list_repo_files(repo_id, revision=revision)
        except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError):
            raise
        except Exception as e:  # Hub unreachable: fall back to the cache, as huggingface_hub does
            hub_error = e
    if offline or hub_error is not None:
        snapshot = cached_snapshot(repo_id, revision, cache_dir)
        if snapshot is None:
            why = (f"the Hub could not be reached ({type(hub_error).__name__}: {hub_error})" if hub_error else
                   "offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1)")
            raise FileNotFoundError(f"{repo_id!r} (revision {revision or 'main'}) is not in the Hub cache "
                                    f"{hub_cache_dir(cache_dir)} and {why}; download it once online "
                                    "or pass a local folder") from hub_error
        return snapshot
    return Path(_download(repo_id, repo_files, subfolder, variant, cache_dir, revision, allow_patterns))


def _download(repo_id, repo_files, subfolder, variant, cache_dir, revision, allow_patterns) -> str:
    from huggingface_hub import hf_hub_download, snapshot_download
    cache_dir = str(hub_cache_dir(cache_dir))
    if allow_patterns is None:
        if subfolder or MODEL_INDEX not in repo_files:
            allow_patterns = model_allow_patterns(repo_files, variant, subfolder, repo=repo_id)
        else:
            index = hf_hub_download(repo_id, MODEL_INDEX, revision=revision, cache_dir=cache_dir)
            allow_patterns = pipeline_allow_patterns(read_model_index(Path(index).parent), repo_files, variant)
    return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)


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

    One file, or the shards listed by the index json's ``weight_map`` (in file order). ValueError
    when the variant is absent (listing the weight files that are there) or an index names a
    path; FileNotFoundError when a shard listed by the index is missing.
    """
    check_variant(variant)
    folder = Path(folder)
    names = _listing(folder)
    chosen = [parse_weight_name(n) for n in select_weight_files(names, variant, stems=[weights_name])]
    if not chosen:
        there = _weight_names(names, stems=[weights_name]) or _weight_names(names)
        raise ValueError(f"no {weights_name} weights of variant {variant!r} in {folder}; weight files there: "
                         f"{there}" + ("" if variant else " (pass variant= to load one of those)"))
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
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        state_dict = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"cannot read weights file {path}: it is truncated or corrupt (or, for .bin, holds "
                         f"more than tensors); delete it and download or save it again "
                         f"({type(e).__name__}: {cause})") from e
    if not (isinstance(state_dict, dict) and all(isinstance(v, torch.Tensor) for v in state_dict.values())):
        raise ValueError(f"{path} is not a state dict (a dict of tensor name -> tensor)")
    return state_dict


def load_state_dict(folder: str | os.PathLike, weights_name: str = "diffusion_pytorch_model",
                    variant: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of ``weights_name``/``variant`` in ``folder`` (every shard), memory-mapped on CPU."""
    state_dict: dict[str, torch.Tensor] = {}
    for path in find_weights(folder, weights_name, variant):
        state_dict.update(read_weights(path))
    return state_dict


# --------------------------------------------------------------------------------------- model loading

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

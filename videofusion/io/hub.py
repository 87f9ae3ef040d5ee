"""Hub ids: the local folder of a model on the Hugging Face Hub, downloaded into the Hub cache with only the
files a load needs (its variant's weights), or found in the cache offline."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from .files import (CONFIG_SUFFIXES, MODEL_INDEX, MissingWeightsError, _weight_names, check_variant,
                    parse_weight_name, read_model_index, select_weight_files)


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

    Raises :class:`~videofusion.io.files.MissingWeightsError` (an OSError and a ValueError) when the folder has
    weights but none of ``variant``, listing those it has.
    """
    check_variant(variant)
    folder = (subfolder or "").strip("/")
    names = _folder_names(repo_files, folder)
    weights = select_weight_files(names, variant)
    if not weights and variant is not None and _weight_names(names):
        raise MissingWeightsError(f"{repo}/{folder}: no weights of variant {variant!r}; its weight files are "
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

    An existing local folder is returned as is; a path that looks like one (``./x``, ``/x``, ``~/x``,
    ``a/b/c``, or one whose parent folder exists) is never looked up on the Hub. Anything else is a Hub id
    ("org/name"), downloaded into the Hub cache (``cache_dir``, ``$HF_HUB_CACHE``, ``$HF_HOME/hub``) with only
    the files needed: ``allow_patterns`` if given, else :func:`model_allow_patterns` for ``subfolder`` (or a
    model at the repo root), else :func:`pipeline_allow_patterns` when the repo has ``model_index.json``.
    Offline (``local_files_only`` or ``HF_HUB_OFFLINE=1``), or when the Hub cannot be reached (asked
    once, :func:`hub_unreachable`), the cached snapshot is used as is. Raises FileNotFoundError saying
    where it looked (the folder, the Hub, the cache) when the model is nowhere, ValueError for a variant
    the repo lacks.
    """
    check_variant(variant)
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"expected a folder path or a Hub id such as 'org/name', got {path_or_id!r}")
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    here = f"no folder {str(path_or_id)!r} here ({path.absolute()})"
    if not isinstance(path_or_id, str) or _looks_like_path(path_or_id) or path.parent.name and path.parent.is_dir():
        raise FileNotFoundError(here)  # a path, or its parent folder exists: certainly not a Hub id
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(path_or_id)
    except ValueError:
        raise FileNotFoundError(f"{here}, and it is not a Hub id such as 'org/name' either") from None
    repo_id = path_or_id
    offline = bool(local_files_only) or hub_offline()
    hub_error = None if offline else hub_unreachable()
    if not offline and hub_error is None:
        from huggingface_hub import HfApi
        from huggingface_hub.utils import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError
        try:
            repo_files = HfApi().list_repo_files(repo_id, revision=revision)
        except (GatedRepoError, RevisionNotFoundError):
            raise
        except RepositoryNotFoundError:
            raise FileNotFoundError(f"{here}, and no model {repo_id!r} on the Hub (or it is private: log in "
                                    "with `hf auth login`)") from None
        except Exception as e:  # the Hub failed after answering: the cache, as huggingface_hub does
            hub_error = f"{type(e).__name__}: {e}"
        else:
            return Path(_download(repo_id, repo_files, subfolder, variant, cache_dir, revision, allow_patterns))
    snapshot = cached_snapshot(repo_id, revision, cache_dir)  # offline: the cached copy, as huggingface_hub does
    if snapshot is None:
        why = (f"the Hub could not be reached ({hub_error})" if hub_error else
               "offline mode is on (local_files_only=True or HF_HUB_OFFLINE=1)")
        raise FileNotFoundError(f"{here}, and no Hub model {repo_id!r} (revision {revision or 'main'}) in the Hub "
                                f"cache {hub_cache_dir(cache_dir)}; {why}")
    return snapshot


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """None if the Hub answers at all, else why not (one request, no retries: a machine without the
    Hub learns it at once instead of after a minute of retries)."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session
    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
    except Exception as e:  # any failure to connect: DNS, refused, proxy, timeout, TLS
        return f"{type(e).__name__}: {e}"
    return None


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

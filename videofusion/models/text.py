"""The CLIP text encoder and tokenizer of a pipeline folder: ours by default, transformers' on request.

The checkpoints name ``transformers.CLIPTextModel`` and ``CLIPTokenizer`` in ``model_index.json``. We load
them into :class:`~videofusion.models.clip.CLIPTextModel` (transformers' keys and config, the same numbers)
and :class:`~videofusion.models.tokenizer.CLIPTokenizer` (the ``tokenizers`` library, the same ids), which
saves a command the 2 s import of transformers. ``VIDEOFUSION_CLIP=transformers`` in the environment loads
transformers' own classes instead (they need ``pip install transformers``); objects of either kind passed
to a pipeline work the same.

Saving: ``text_encoder.save_pretrained(dir, variant="fp16")`` writes ``config.json`` +
``model.fp16.safetensors``; ``tokenizer.save_pretrained(dir)`` writes ``tokenizer.json``, ``vocab.json``,
``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json``; transformers loads both.
"""
from __future__ import annotations

import os

import torch

from ..io.files import component_folder, read_json
from ..io.loading import check_dtype
from .clip import CLIPTextModel, text_weight_files

BACKEND_VARIABLE = "VIDEOFUSION_CLIP"
BACKENDS = ("videofusion", "transformers")


def text_backend(backend: str | None = None) -> str:
    """``backend`` if given, else ``$VIDEOFUSION_CLIP``, else ``"videofusion"``: whose CLIP classes load.
    ValueError naming the variable (or ``backend``) and the accepted values otherwise."""
    name, value = ("backend", backend) if backend is not None else (BACKEND_VARIABLE, os.environ.get(BACKEND_VARIABLE))
    if value in (None, ""):
        return "videofusion"
    if value not in BACKENDS:
        raise ValueError(f"{name}: must be one of {list(BACKENDS)}, got {value!r}")
    return value


def _transformers_dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56


def load_text_encoder(folder: str | os.PathLike, subfolder: str | None = "text_encoder",
                      torch_dtype: torch.dtype | None = None, variant: str | None = None,
                      backend: str | None = None):
    """The CLIP text encoder of ``folder/subfolder`` (a local folder: resolve Hub ids first with
    :func:`videofusion.io.hub.resolve_pretrained`), in eval mode: our :class:`CLIPTextModel`, or with
    ``backend="transformers"`` (default: ``$VIDEOFUSION_CLIP``, else ``"videofusion"``) transformers' own.

    ``variant`` picks ``model.<variant>.safetensors`` (or ``pytorch_model.<variant>.bin``, shards likewise).
    ``torch_dtype=None`` gives what transformers 5 gives (and diffusers' pipeline with it): the dtype in
    ``config.json`` (float16 for an fp16 save), else the weights'. Ours is built on the meta device and takes
    the memory-mapped weights after a strict key check. Raises FileNotFoundError for a missing folder or
    config.json, ValueError when the variant's weights are absent (listing the weight files there) or the
    weights do not fit the config.
    """
    check_dtype(torch_dtype)
    backend = text_backend(backend)
    path = component_folder(folder, subfolder)
    if backend == "transformers":
        read_json(path, "config.json")  # the same errors as ours: a missing config, missing weights
        text_weight_files(path, variant)
        return _transformers_text_encoder(path, torch_dtype, variant)
    return CLIPTextModel.from_folder(path, torch_dtype=torch_dtype, variant=variant)


def _transformers_text_encoder(path, torch_dtype: torch.dtype | None, variant: str | None):
    from transformers import CLIPTextModel as TransformersCLIPTextModel
    from transformers.utils import logging as hf_logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its per-tensor "Loading weights" bar is noise in a CLI
    try:
        return TransformersCLIPTextModel.from_pretrained(str(path), variant=variant,
                                                         **{_transformers_dtype_kwarg(): torch_dtype}).eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def load_tokenizer(folder: str | os.PathLike, subfolder: str | None = "tokenizer", backend: str | None = None):
    """The CLIP tokenizer of ``folder/subfolder``: our :class:`~videofusion.models.tokenizer.CLIPTokenizer`
    from ``tokenizer.json`` where the folder has one, else from ``vocab.json`` + ``merges.txt`` (as the Hub
    checkpoints ship); with ``backend="transformers"`` (default: ``$VIDEOFUSION_CLIP``) transformers'
    ``CLIPTokenizer``. The same ids either way. FileNotFoundError naming the folder's files when neither
    layout is there."""
    backend = text_backend(backend)
    path = component_folder(folder, subfolder)
    names = set(os.listdir(path))
    if "tokenizer.json" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise FileNotFoundError(f"{path}: a CLIP tokenizer needs vocab.json + merges.txt or tokenizer.json; "
                                f"it holds {sorted(names)}")
    if backend == "transformers":
        from transformers import CLIPTokenizer as TransformersCLIPTokenizer
        return TransformersCLIPTokenizer.from_pretrained(str(path))
    from .tokenizer import CLIPTokenizer
    return CLIPTokenizer.from_folder(path)

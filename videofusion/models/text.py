"""The CLIP text encoder and tokenizer: transformers' own classes, loaded from a pipeline folder.

The checkpoints name ``transformers.CLIPTextModel`` and ``CLIPTokenizer`` in ``model_index.json``,
so we use those classes as they are (weights and tokenisation are then the reference's by
construction); this file only finds the files and gives clear errors first.

Saving is transformers' own ``save_pretrained``: ``text_encoder.save_pretrained(dir, variant="fp16")``
writes ``config.json`` + ``model.fp16.safetensors``; ``tokenizer.save_pretrained(dir)`` writes
``tokenizer.json`` + ``tokenizer_config.json`` (transformers 5), which :func:`load_tokenizer` reads
as well as the Hub's ``vocab.json`` + ``merges.txt``.
"""
from __future__ import annotations

import os

import torch

from ..io.files import component_folder, read_json, select_weight_files
from ..io.loading import check_dtype

TEXT_ENCODER_STEMS = ("model", "pytorch_model")  # transformers: model.safetensors, pytorch_model.bin


def _transformers_dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"  # renamed in 4.56


def load_text_encoder(folder: str | os.PathLike, subfolder: str | None = "text_encoder",
                      torch_dtype: torch.dtype | None = None, variant: str | None = None):
    """``transformers.CLIPTextModel`` from ``folder/subfolder`` (a local folder: resolve Hub ids first with
    :func:`videofusion.io.hub.resolve_pretrained`), in eval mode.

    ``variant`` picks ``model.<variant>.safetensors`` (or ``pytorch_model.<variant>.bin``, shards
    likewise). ``torch_dtype=None`` lets transformers choose, as diffusers' pipeline does: with
    transformers >= 5 that is the dtype in ``config.json`` (float16 for an fp16 save), with
    transformers 4 it is float32. Raises FileNotFoundError for a missing folder or config.json,
    ValueError when the variant's weights are absent (listing the weight files there).
    """
    check_dtype(torch_dtype)
    path = component_folder(folder, subfolder)
    read_json(path, "config.json")
    names = sorted(os.listdir(path))
    if not select_weight_files(names, variant, stems=TEXT_ENCODER_STEMS):
        there = [n for n in names if n.endswith((".safetensors", ".bin", ".index.json"))]
        raise ValueError(f"no text encoder weights of variant {variant!r} in {path}; weight files there: {there}")
    from transformers import CLIPTextModel
    from transformers.utils import logging as hf_logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its per-tensor "Loading weights" bar is noise in a CLI
    try:
        return CLIPTextModel.from_pretrained(str(path), variant=variant,
                                             **{_transformers_dtype_kwarg(): torch_dtype}).eval()
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def load_tokenizer(folder: str | os.PathLike, subfolder: str | None = "tokenizer"):
    """The CLIP tokenizer of ``folder/subfolder``: ``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt``
    (as the Hub checkpoints ship), else ``CLIPTokenizerFast`` from ``tokenizer.json`` (as transformers 5
    saves). Both give the same ids. FileNotFoundError naming the folder's files when neither is there."""
    path = component_folder(folder, subfolder)
    names = set(os.listdir(path))
    from transformers import CLIPTokenizer, CLIPTokenizerFast
    if {"vocab.json", "merges.txt"} <= names:
        cls = CLIPTokenizer
    elif "tokenizer.json" in names:
        cls = CLIPTokenizerFast
    else:
        raise FileNotFoundError(f"{path}: a CLIP tokenizer needs vocab.json + merges.txt or tokenizer.json; "
                                f"it holds {sorted(names)}")
    return cls.from_pretrained(str(path))

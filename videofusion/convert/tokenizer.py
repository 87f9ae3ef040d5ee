"""The original release's tokenizer: OpenCLIP's byte-level BPE vocabulary (``bpe_simple_vocab_16e6.txt.gz``,
shipped inside the ``open_clip_torch`` package; the optional extra ``videofusion[original]``) as transformers'
``CLIPTokenizer``, giving the ids ``open_clip.tokenize`` gives.

The vocabulary is OpenAI CLIP's: 256 byte symbols, the same with ``</w>`` (end of word), the first 48,894
merges of the file, then start and end of text (ids 49406 and 49407; transformers spells them
``<|startoftext|>`` / ``<|endoftext|>``, OpenCLIP ``<start_of_text>`` / ``<end_of_text>``). OpenCLIP pads with
id 0, which is ``!``: the published diffusers folder's pad token. The tokenizer is built in memory; nothing
is written. Only the vocabulary file is read: the ``open_clip`` package is never imported.
"""
from __future__ import annotations

import gzip
import importlib.util
import inspect
import os
from pathlib import Path

VOCABULARY_FILE = "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # the merges OpenCLIP reads from the file
MAX_LENGTH = 77
BOS, EOS, PAD = "<|startoftext|>", "<|endoftext|>", "!"
INSTALL = 'pip install "videofusion[original]" (open_clip_torch, whose package holds the vocabulary)'


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, as GPT-2 / CLIP's byte-level BPE spells bytes: printable Latin-1 bytes
    stand for themselves, the others take the characters from 256 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def openclip_vocabulary() -> Path:
    """The path of OpenCLIP's BPE vocabulary in the installed ``open_clip_torch`` package (found without
    importing it). FileNotFoundError saying what to install, or to pass a tokenizer folder, otherwise."""
    spec = importlib.util.find_spec("open_clip")
    path = Path(spec.submodule_search_locations[0]) / VOCABULARY_FILE if spec and spec.submodule_search_locations \
        else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the tokenizer: OpenCLIP's vocabulary {VOCABULARY_FILE} is not installed; "
                                f"{INSTALL}, or pass a CLIP tokenizer folder (tokenizer=..., --tokenizer FOLDER)")
    return path


def read_vocabulary(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of an OpenCLIP BPE file: token -> id (49,408 of them), and the merges in rank
    order. ValueError naming the file when it is not one."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise ValueError(f"{path}: not a gzipped BPE vocabulary ({type(e).__name__}: {e})") from None
    merges = [tuple(line.split()) for line in lines[1:MERGES + 1]]
    if len(merges) != MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {MERGES} merges of two symbols after the header line, "
                         f"got {len(merges)} lines")
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(path: str | os.PathLike | None = None):
    """transformers' ``CLIPTokenizer`` from OpenCLIP's vocabulary (``path``, default the installed
    package's), with the published folder's settings: 77 tokens, pad ``!`` (id 0). Built in memory, which
    transformers >= 5 allows; with an older transformers, ValueError saying to pass a tokenizer folder."""
    from transformers import CLIPTokenizer

    if "vocab" not in inspect.signature(CLIPTokenizer.__init__).parameters:
        import transformers
        raise ValueError(f"the tokenizer: building it from OpenCLIP's vocabulary needs transformers >= 5 "
                         f"(installed: {transformers.__version__}); pass a CLIP tokenizer folder instead "
                         "(tokenizer=..., --tokenizer FOLDER)")
    vocab, merges = read_vocabulary(path if path is not None else openclip_vocabulary())
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=PAD,
                         model_max_length=MAX_LENGTH, split_special_tokens=True)

"""A small CLIP tokenizer vocabulary learned from a word list, for tiny models trained from scratch.

CLIP's tokenizer is byte-level BPE (Radford et al. 2021; Sennrich et al. 2016): text is split into
words, each word into byte characters with ``</w>`` on the last one, then merges are applied in rank
order. We learn merges the way BPE does (repeatedly merge the most frequent adjacent pair) until every
word of the list is one token, and write ``vocab.json`` + ``merges.txt`` in CLIP's layout: the 256 byte
characters, the same with ``</w>``, the merged tokens, then ``<|startoftext|>`` and ``<|endoftext|>``.
Any other text still tokenizes, as byte characters.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path


def byte_to_character() -> dict[int, str]:
    """GPT-2/CLIP's map of the bytes 0..255 to printable characters, in CLIP's vocabulary order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes)}


def learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges, most frequent pair first (ties broken alphabetically), until each word is one token."""
    table = byte_to_character()
    pieces = {w: [table[b] for b in w.encode("utf-8")] for w in sorted(set(words))}
    for w in pieces:
        pieces[w][-1] += "</w>"
    merges = []
    while True:
        pairs = Counter(p for toks in pieces.values() for p in zip(toks, toks[1:]))
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, toks in pieces.items():
            merged, i = [], 0
            while i < len(toks):
                if i + 1 < len(toks) and (toks[i], toks[i + 1]) == best:
                    merged.append(toks[i] + toks[i + 1])
                    i += 2
                else:
                    merged.append(toks[i])
                    i += 1
            pieces[w] = merged


def write_clip_vocabulary(words: list[str], out_dir: str | os.PathLike) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` for ``words`` (lower-case) into ``out_dir``; returns it."""
    words = [w.lower() for w in words]
    if not words or not all(w.isalpha() for w in words):
        raise ValueError("words: a non-empty list of alphabetic words is needed")
    chars = list(byte_to_character().values())
    merges = learn_merges(words)
    vocab = chars + [c + "</w>" for c in chars]
    seen = set(vocab)
    for a, b in merges:
        if a + b not in seen:
            vocab.append(a + b)
            seen.add(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return out


def build_clip_tokenizer(words: list[str], out_dir: str | os.PathLike, model_max_length: int = 77):
    """A transformers ``CLIPTokenizer`` over the learned vocabulary (see :func:`write_clip_vocabulary`)."""
    from transformers import CLIPTokenizer
    out = write_clip_vocabulary(words, out_dir)
    return CLIPTokenizer.from_pretrained(str(out), model_max_length=model_max_length)

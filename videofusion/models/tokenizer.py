"""CLIPTokenizer: CLIP's byte-level BPE tokenizer on the ``tokenizers`` library, a drop-in for transformers'
``CLIPTokenizer`` / ``CLIPTokenizerFast`` (the same ids, padding, truncation and decoding) without importing
transformers.

CLIP's tokenization (Radford et al. 2021): NFC-normalise, collapse whitespace, lower-case; split into words,
numbers and punctuation runs; map each word's bytes to printable characters and apply the BPE merges, the
last piece of a word ending in ``</w>``; then ``<|startoftext|>`` ids ``<|endoftext|>``. A folder's
``tokenizer.json`` holds the whole pipeline; a folder with ``vocab.json`` + ``merges.txt`` (the Hub's
older layout) gets the pipeline built here. ``tokenizer_config.json`` / ``special_tokens_map.json`` name
the special tokens and ``model_max_length``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

# transformers' CLIPTokenizer defaults, used where a folder's configs do not name a token
DEFAULT_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
NO_MAX_LENGTH = int(1e30)  # model_max_length of a tokenizer whose config names none, as transformers has it
END_OF_WORD = "</w>"
# CLIP's word split: the special tokens, English contractions, letter runs, single digits, other runs
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
PADDING = {True: "longest", "longest": "longest", "max_length": "max_length", False: None, "do_not_pad": None,
           None: None}
TRUNCATION = {True: True, "longest_first": True, "only_first": True, False: False, "do_not_truncate": False}


def clip_bpe_tokenizer(vocab_file: str | os.PathLike, merges_file: str | os.PathLike, unk_token: str) -> Tokenizer:
    """CLIP's pipeline (normaliser, pre-tokeniser, BPE, byte-level decoder) over ``vocab.json`` + ``merges.txt``."""
    tok = Tokenizer(BPE.from_file(str(vocab_file), str(merges_file), unk_token=unk_token, dropout=None,
                                  continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),  # keep the matches only
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _added_token(value: str | dict) -> AddedToken:
    """A special token as a config names it: a string, or transformers' dict (content, lstrip, rstrip, ...)."""
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    flags = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
    return AddedToken(value["content"], special=True, **{"normalized": False, **flags})


class Encoding(dict):
    """A tokenizer's result, read as transformers' ``BatchEncoding`` is: ``enc.input_ids``,
    ``enc["attention_mask"]``, ``enc.to(device)`` (tensors only)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device) -> "Encoding":
        return Encoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


class CLIPTokenizer:
    """CLIP's tokenizer (see the module docstring): ``tokenizer(texts, padding="max_length", max_length=77,
    truncation=True, return_tensors="pt").input_ids`` is (batch, 77) ``torch.long``, as with transformers.

    ``tokenizer``: the ``tokenizers.Tokenizer`` (normaliser to decoder); the special tokens are strings or
    transformers' token dicts; ``model_max_length``: the longest sequence the text encoder reads (77 for CLIP);
    ``padding_side`` / ``truncation_side``: ``"right"`` (default) or ``"left"``; ``split_special_tokens``:
    a special token's text inside a prompt is split as ordinary text (the original release pads with ``!``,
    which a prompt's ``!`` must not become), default False.
    """

    is_fast = True
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, tokenizer: Tokenizer, bos_token: str | dict = "<|startoftext|>",
                 eos_token: str | dict = "<|endoftext|>", pad_token: str | dict | None = "<|endoftext|>",
                 unk_token: str | dict = "<|endoftext|>", model_max_length: int = NO_MAX_LENGTH,
                 padding_side: str = "right", truncation_side: str = "right", name_or_path: str = "",
                 split_special_tokens: bool = False):
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("right", "left"):
                raise ValueError(f"{name}: must be 'right' or 'left', got {side!r}")
        if not (isinstance(model_max_length, int) and model_max_length > 0):
            raise ValueError(f"model_max_length: must be a positive int, got {model_max_length!r}")
        self._tokenizer = tokenizer
        specials = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token, "unk_token": unk_token}
        known = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        new = [_added_token(v) for v in specials.values() if v is not None]
        tokenizer.add_special_tokens([t for t in new if t.content not in known])  # kept when already there
        self._specials = {k: (v if isinstance(v, str) or v is None else v["content"]) for k, v in specials.items()}
        tokenizer.post_processor = processors.RobertaProcessing(  # <|startoftext|> ids <|endoftext|>
            (self.eos_token, self.eos_token_id), (self.bos_token, self.bos_token_id),
            trim_offsets=False, add_prefix_space=False)
        tokenizer.encode_special_tokens = bool(split_special_tokens)
        self.split_special_tokens = bool(split_special_tokens)
        self.model_max_length = model_max_length
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.name_or_path = name_or_path

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> "CLIPTokenizer":
        """Read a tokenizer folder: ``tokenizer.json`` where there is one, else ``vocab.json`` + ``merges.txt``;
        special tokens and ``model_max_length`` from ``tokenizer_config.json``, then ``special_tokens_map.json``.
        FileNotFoundError naming the folder's files when neither layout is there."""
        folder = Path(folder)
        config = _read_optional_json(folder / "tokenizer_config.json")
        special_map = _read_optional_json(folder / "special_tokens_map.json")
        specials = {k: config.get(k, special_map.get(k, default)) for k, default in DEFAULT_SPECIAL_TOKENS.items()}
        if (folder / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            unk = specials["unk_token"]
            tok = clip_bpe_tokenizer(folder / "vocab.json", folder / "merges.txt",
                                     unk if isinstance(unk, str) else unk["content"])
        else:
            names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
            raise FileNotFoundError(f"{folder}: a CLIP tokenizer needs vocab.json + merges.txt or tokenizer.json; "
                                    f"it holds {names}")
        max_length = config.get("model_max_length") or NO_MAX_LENGTH
        return cls(tok, **specials, model_max_length=int(max_length) if max_length < NO_MAX_LENGTH else NO_MAX_LENGTH,
                   padding_side=config.get("padding_side") or "right",
                   truncation_side=config.get("truncation_side") or "right", name_or_path=str(folder),
                   split_special_tokens=bool(config.get("split_special_tokens", False)))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, subfolder: str | None = None,
                        **hub_kwargs: Any) -> "CLIPTokenizer":
        """A tokenizer folder (``path_or_id/subfolder``) or Hub id (``hub_kwargs``: cache_dir, revision,
        local_files_only), see :meth:`from_folder`."""
        from ..io.files import component_folder
        from ..io.hub import resolve_pretrained
        root = resolve_pretrained(str(path_or_id), subfolder=subfolder, **hub_kwargs)
        return cls.from_folder(component_folder(root, subfolder))

    # ---------------------------------------------------------------------------------------- the vocabulary

    def _token_id(self, key: str) -> int | None:
        token = self._specials[key]
        return None if token is None else self._tokenizer.token_to_id(token)

    bos_token = property(lambda self: self._specials["bos_token"])
    eos_token = property(lambda self: self._specials["eos_token"])
    pad_token = property(lambda self: self._specials["pad_token"])
    unk_token = property(lambda self: self._specials["unk_token"])
    bos_token_id = property(lambda self: self._token_id("bos_token"))
    eos_token_id = property(lambda self: self._token_id("eos_token"))
    pad_token_id = property(lambda self: self._token_id("pad_token"))
    unk_token_id = property(lambda self: self._token_id("unk_token"))

    @property
    def all_special_tokens(self) -> list[str]:
        """The distinct special tokens (bos, eos, unk, pad), in that order."""
        return list(dict.fromkeys(t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._tokenizer.token_to_id(t) for t in self.all_special_tokens]

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The ``tokenizers.Tokenizer`` underneath."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Tokens of the BPE vocabulary (added tokens not counted)."""
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        """Every token, added ones included: the text encoder's ``vocab_size`` must be at least this."""
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def tokenize(self, text: str) -> list[str]:
        """The BPE tokens of ``text``, without special tokens (``"a red"`` -> ``["a</w>", "red</w>"]``)."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Ids of tokens (unknown ones: the unk token's id)."""
        if isinstance(tokens, str):
            found = self._tokenizer.token_to_id(tokens)
            return self.unk_token_id if found is None else found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        return [self._tokenizer.id_to_token(int(i)) for i in ids]

    # ------------------------------------------------------------------------------------------ encoding

    def __call__(self, text: str | Sequence[str], padding: bool | str = False, truncation: bool | str | None = None,
                 max_length: int | None = None, return_tensors: str | None = None, add_special_tokens: bool = True,
                 return_attention_mask: bool = True, verbose: bool = True) -> Encoding:
        """Token ids of ``text`` (one string, or a list of them), as transformers' tokenizers compute them.

        ``padding``: False (default), True / ``"longest"`` (to the batch's longest) or ``"max_length"`` (to
        ``max_length``, default ``model_max_length``), with ``pad_token_id`` and attention-mask 0s.
        ``truncation``: True cuts each sequence to ``max_length`` (default ``model_max_length``) tokens, its
        special tokens included; None (default) truncates only when ``max_length`` is given without padding.
        ``return_tensors``: None (lists), ``"pt"`` (torch.long, (batch, seq); (1, seq) for one string) or
        ``"np"``. ``verbose`` is accepted for transformers' callers and has no effect. Returns an
        :class:`Encoding` with ``input_ids`` and (by default) ``attention_mask``.
        """
        single = isinstance(text, str)
        texts = [text] if single else text
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text: expected a string or a list of strings, got {type(text).__name__}")
        if padding not in PADDING:
            raise ValueError(f"padding: must be one of {list(PADDING)}, got {padding!r}")
        if truncation is not None and truncation not in TRUNCATION:
            raise ValueError(f"truncation: must be one of None, {list(TRUNCATION)}, got {truncation!r}")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors: must be None, 'pt' or 'np', got {return_tensors!r}")
        if max_length is not None and not (isinstance(max_length, int) and max_length > 0):
            raise ValueError(f"max_length: must be None or a positive int, got {max_length!r}")
        pad_to = PADDING[padding]
        cut = (max_length is not None and pad_to is None) if truncation is None else TRUNCATION[truncation]
        limit = max_length if max_length is not None else self.model_max_length
        if limit >= NO_MAX_LENGTH:  # no length anywhere: as transformers, neither cut nor pad to a length
            cut, pad_to = False, (None if pad_to == "max_length" else pad_to)

        start, end = ([self.bos_token_id], [self.eos_token_id]) if add_special_tokens else ([], [])
        rows = []
        for t in texts:
            ids = self._tokenizer.encode(t, add_special_tokens=False).ids
            if cut:
                room = limit - len(start) - len(end)
                if room < 0:
                    raise ValueError(f"max_length: {limit} leaves no room for the {len(start) + len(end)} special "
                                     "tokens; pass at least that many")
                ids = ids[:room] if self.truncation_side == "right" else ids[max(0, len(ids) - room):]
            rows.append(start + ids + end)
        masks = [[1] * len(r) for r in rows]
        if pad_to is not None:
            if self.pad_token_id is None:
                raise ValueError(f"padding: this tokenizer has no pad_token, so only padding=False works, "
                                 f"got {padding!r}")
            width = limit if pad_to == "max_length" else max(map(len, rows), default=0)
            for r, m in zip(rows, masks):
                extra = max(0, width - len(r))
                if self.padding_side == "right":
                    r += [self.pad_token_id] * extra
                    m += [0] * extra
                else:
                    r[:0], m[:0] = [self.pad_token_id] * extra, [0] * extra
        out = {"input_ids": rows, **({"attention_mask": masks} if return_attention_mask else {})}
        if return_tensors is not None:
            if len({len(r) for r in rows}) > 1:
                raise ValueError("return_tensors: the sequences have different lengths "
                                 f"({sorted({len(r) for r in rows})}); pass padding=True or padding='max_length' "
                                 "(and truncation=True) to make a tensor")
            out = {k: _tensor(v, return_tensors) for k, v in out.items()}
        elif single:
            out = {k: v[0] for k, v in out.items()}
        return Encoding(out)

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        """The ids of one string (``__call__``'s keywords apply)."""
        return self(text, add_special_tokens=add_special_tokens, **kwargs)["input_ids"]

    # ------------------------------------------------------------------------------------------ decoding

    def decode(self, token_ids, skip_special_tokens: bool = False, **kwargs: Any) -> str:
        """The text of ids (a list, a 1-D tensor or one int): words joined by spaces, lower-case as encoded.
        ``skip_special_tokens`` leaves out bos, eos, pad. Other keywords of transformers' ``decode``
        (``clean_up_tokenization_spaces``) are accepted and, as there for BPE tokenizers, change nothing."""
        ids = [int(token_ids)] if isinstance(token_ids, int) else [int(i) for i in token_ids]
        text = self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        return text.replace(END_OF_WORD, " ").strip()

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs: Any) -> list[str]:
        """:meth:`decode` of each row of ``sequences`` (a list of lists, or a 2-D tensor)."""
        return [self.decode(row, skip_special_tokens=skip_special_tokens, **kwargs) for row in sequences]

    # ------------------------------------------------------------------------------------------- saving

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str, ...]:
        """Write ``tokenizer.json``, ``vocab.json`` + ``merges.txt`` (the BPE alone, for loaders that read
        those), ``tokenizer_config.json`` and ``special_tokens_map.json``, every file atomically; transformers 4
        and 5 load the folder. Returns the paths written."""
        from ..io.saving import atomic_write_text
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        whole = json.loads(self._tokenizer.to_str())
        specials = {k: v for k, v in self._specials.items() if v is not None}
        config = {"tokenizer_class": "CLIPTokenizer", **specials, "model_max_length": self.model_max_length,
                  "padding_side": self.padding_side, "truncation_side": self.truncation_side,
                  "clean_up_tokenization_spaces": False}
        if self.split_special_tokens:
            config["split_special_tokens"] = True
        files = {"tokenizer.json": self._tokenizer.to_str(pretty=True),
                 "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
                 "special_tokens_map.json": json.dumps(specials, indent=2, ensure_ascii=False)}
        model = whole.get("model", {})
        if model.get("type") == "BPE":
            vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
            files["vocab.json"] = json.dumps(vocab, ensure_ascii=False)
            files["merges.txt"] = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
        for name, text in files.items():
            atomic_write_text(folder / name, text if text.endswith("\n") else text + "\n")
        return tuple(str(folder / name) for name in files)

    def __repr__(self) -> str:
        return (f"CLIPTokenizer(name_or_path={self.name_or_path!r}, vocab_size={len(self)}, "
                f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r})")


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


def _tensor(rows: list[list[int]], kind: str):
    if kind == "np":
        import numpy as np
        return np.asarray(rows, dtype=np.int64)
    import torch
    return torch.tensor(rows, dtype=torch.long)

"""videofusion.models.tokenizer: our CLIP tokenizer against transformers' CLIPTokenizer (the oracle): the demo's
tokenizer.json, a tiny vocab.json + merges.txt, the Hub layout with a "!" pad token, and edge cases."""
from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import write_tiny_clip_vocab
from test_text import write_hub_tokenizer

from videofusion.demo import DEMO_MODEL_PATH
from videofusion.models.text import load_tokenizer
from videofusion.models.tokenizer import CLIPTokenizer

PROMPTS = ["a red circle moving left", "Spiderman is surfing", "a man surfing, 4k!", "", "ÉTÉ   à la plage " * 20,
           "wow!!! ! hey!", "x<|endoftext|>y <|startoftext|>", "don't STOP, it's 12345", "\t\n  lead/trail  ",
           "emoji 🎉🎉 中文字 naïve café", "a " * 100 + "zebra"]
CALLS = [dict(padding="max_length", max_length=77, truncation=True), dict(padding="max_length", truncation=True),
         dict(padding="longest"), dict(), dict(max_length=7), dict(padding=True, truncation=True, max_length=9),
         dict(padding="max_length", max_length=20), dict(truncation=True), dict(add_special_tokens=False)]


def _folders(root) -> dict[str, str]:
    write_tiny_clip_vocab(root / "tiny")  # no merges, no config: model_max_length unset
    write_hub_tokenizer(root / "hub")
    write_hub_tokenizer(root / "sd2")  # SD 2.x / ModelScope: the pad token is "!"
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((root / "sd2" / name).read_text())
        (root / "sd2" / name).write_text(json.dumps({**config, "pad_token": "!"}))
    left = root / "left"  # the demo's tokenizer padding and truncating on the left
    left.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (left / name).write_bytes((DEMO_MODEL_PATH / "tokenizer" / name).read_bytes())
    config = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left",
                                                            "truncation_side": "left"}))
    return {"demo": str(DEMO_MODEL_PATH / "tokenizer"), "tiny": str(root / "tiny"), "hub": str(root / "hub"),
            "sd2": str(root / "sd2"), "left": str(left)}


def _assert_same(ref, ours, label: str) -> None:
    for kwargs in CALLS:
        a, b = ref(PROMPTS, **kwargs), ours(PROMPTS, **kwargs)
        assert a.input_ids == b.input_ids and a.attention_mask == b.attention_mask, (label, kwargs)
        assert ref(PROMPTS[2], **kwargs).input_ids == ours(PROMPTS[2], **kwargs).input_ids, (label, kwargs)
    for name in ("model_max_length", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "vocab_size",
                 "all_special_ids"):
        assert getattr(ref, name) == getattr(ours, name), (label, name)
    assert len(ref) == len(ours)
    ids = ref(PROMPTS, padding="longest", return_tensors="pt").input_ids
    for skip in (False, True):
        assert ref.batch_decode(ids, skip_special_tokens=skip) == ours.batch_decode(ids, skip_special_tokens=skip)
    assert ref.decode(ids[2]) == ours.decode(ids[2]) and ref.tokenize(PROMPTS[9]) == ours.tokenize(PROMPTS[9])


def test_ids_padding_truncation_and_decoding_match_transformers(tmp_path):
    from transformers import CLIPTokenizer as Reference
    for label, folder in _folders(tmp_path).items():
        ours = load_tokenizer(folder, subfolder=None)
        assert isinstance(ours, CLIPTokenizer)
        _assert_same(Reference.from_pretrained(folder), ours, label)


def test_the_pipeline_calls(tmp_path):
    """What the pipeline asks: (batch, model_max_length) long tensors, and the cut part of a long prompt."""
    tok = load_tokenizer(DEMO_MODEL_PATH)
    limit = tok.model_max_length
    ids = tok(["a red circle", "a " * 30 + "zebra"], padding="max_length", max_length=limit, truncation=True,
              return_tensors="pt").input_ids
    assert ids.shape == (2, limit) and ids.dtype == torch.long
    assert ids[0, 0] == tok.bos_token_id and ids[1, -1] == tok.eos_token_id and ids[0, -1] == tok.pad_token_id
    whole = tok(["a " * 30 + "zebra"], padding="longest", return_tensors="pt", verbose=False).input_ids
    assert whole.shape[-1] > limit
    assert tok.batch_decode(whole[:, limit - 1:-1], skip_special_tokens=True)[0].endswith("a zebra")
    assert tok("a red circle", return_tensors="pt").input_ids.shape == (1, 5)  # one string: a batch of one
    assert tok("").input_ids == [tok.bos_token_id, tok.eos_token_id]
    assert tok(["a", "red"], return_tensors="np")["input_ids"].shape == (2, 3)
    enc = tok(["a"], return_tensors="pt").to("cpu")
    assert enc.attention_mask.tolist() == [[1, 1, 1]] and list(enc) == ["input_ids", "attention_mask"]


def test_saved_folders_load_both_ways(tmp_path):
    from transformers import CLIPTokenizer as Reference
    folders = _folders(tmp_path / "src")
    for label in ("demo", "sd2"):
        ours = load_tokenizer(folders[label], subfolder=None)
        ours.save_pretrained(tmp_path / label)
        written = set(os.listdir(tmp_path / label))
        assert {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json"} <= written
        _assert_same(Reference.from_pretrained(tmp_path / label), ours, label)  # ours -> transformers
        Reference.from_pretrained(folders[label]).save_pretrained(tmp_path / f"{label}-theirs")
        _assert_same(Reference.from_pretrained(folders[label]),  # transformers -> ours (tokenizer.json only)
                     CLIPTokenizer.from_pretrained(tmp_path / f"{label}-theirs"), label)
    vocab_only = tmp_path / "vocab-only"  # the Hub layout written from ours: vocab.json + merges.txt + configs
    vocab_only.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (vocab_only / name).write_bytes((tmp_path / "sd2" / name).read_bytes())
    _assert_same(Reference.from_pretrained(folders["sd2"]), load_tokenizer(vocab_only, subfolder=None), "vocab-only")


def test_errors_name_the_argument():
    tok = load_tokenizer(DEMO_MODEL_PATH)
    with pytest.raises(ValueError, match=r"padding: must be one of .*'max_length'.*got 'maximum'"):
        tok("a", padding="maximum")
    with pytest.raises(ValueError, match="return_tensors: must be None, 'pt' or 'np', got 'tf'"):
        tok("a", return_tensors="tf")
    with pytest.raises(ValueError, match=r"return_tensors: the sequences have different lengths \(\[3, 4\]\)"):
        tok(["a", "a red"], return_tensors="pt")
    with pytest.raises(ValueError, match="max_length: 1 leaves no room for the 2 special tokens"):
        tok("a red", max_length=1, truncation=True)
    with pytest.raises(TypeError, match="text: expected a string or a list of strings, got int"):
        tok(3)
    with pytest.raises(ValueError, match="truncation: must be one of"):
        tok("a", truncation="middle")

"""videofusion.models.text: the CLIP text encoder (variants, dtypes, .bin) and tokenizer (both file layouts)."""
from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch
from helpers import TINY_TEXT

from videofusion.models.text import load_text_encoder, load_tokenizer


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A pipeline-like folder: text_encoder/ with plain fp32 safetensors, fp16 safetensors, fp16 bin."""
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).eval()
    root = tmp_path_factory.mktemp("te")
    model.save_pretrained(root / "text_encoder")
    half = copy.deepcopy(model).half()
    half.save_pretrained(root / "fp16" / "text_encoder", variant="fp16")
    (root / "bin" / "text_encoder").mkdir(parents=True)
    shutil.copy(root / "text_encoder" / "config.json", root / "bin" / "text_encoder")
    torch.save(half.state_dict(), root / "bin" / "text_encoder" / "pytorch_model.fp16.bin")
    return root, model


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].to(sb[k].dtype), sb[k]) for k in sa)


def test_load_text_encoder_plain_and_variants(encoder_dir):
    from transformers import CLIPTextModel
    root, reference = encoder_dir
    plain = load_text_encoder(root)
    assert plain.dtype == torch.float32 and not plain.training and _same(reference, plain)
    ids = torch.tensor([[512, 5, 9, 300, 513]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).last_hidden_state, reference(ids).last_hidden_state)

    fp16 = load_text_encoder(root / "fp16", variant="fp16", torch_dtype=torch.float16)
    assert fp16.dtype == torch.float16 and _same(reference.half(), fp16)
    assert load_text_encoder(root / "fp16", variant="fp16", torch_dtype=torch.float32).dtype == torch.float32
    # torch_dtype=None: whatever transformers picks, as in diffusers' pipeline (config dtype on transformers 5)
    own = CLIPTextModel.from_pretrained(root / "fp16" / "text_encoder", variant="fp16")
    assert load_text_encoder(root / "fp16", variant="fp16").dtype == own.dtype

    from_bin = load_text_encoder(root / "bin", variant="fp16", torch_dtype=torch.float16)
    assert _same(reference.half(), from_bin)


def test_text_encoder_errors(encoder_dir, tmp_path):
    root, _ = encoder_dir
    with pytest.raises(ValueError, match=r"variant 'fp16'.*\['model\.safetensors'\]"):
        load_text_encoder(root, variant="fp16")
    with pytest.raises(ValueError, match=r"variant None.*model\.fp16\.safetensors"):
        load_text_encoder(root / "fp16")
    with pytest.raises(FileNotFoundError, match="subfolder='text_encoder'"):
        load_text_encoder(tmp_path)
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_text_encoder(tmp_path)
    with pytest.raises(TypeError, match="torch_dtype"):
        load_text_encoder(root, torch_dtype="fp16")


def write_hub_tokenizer(folder) -> None:
    """A tiny CLIP BPE tokenizer in the Hub checkpoints' layout: byte-level vocab plus a few merges."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    merges = [("s", "u"), ("su", "r"), ("i", "n"), ("in", "g</w>"), ("m", "a"), ("ma", "n</w>")]
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({**special, "model_max_length": 77, "do_lower_case": True, "errors": "replace",
                   "add_prefix_space": False, "tokenizer_class": "CLIPTokenizer"}, f)


PROMPTS = ["Spiderman is surfing", "a man surfing, 4k!", "", "ÉTÉ   à la plage " * 20]


def test_tokenizer_layouts_give_the_same_ids(tmp_path):
    write_hub_tokenizer(tmp_path / "hub" / "tokenizer")
    hub = load_tokenizer(tmp_path / "hub")
    hub.save_pretrained(tmp_path / "new" / "tokenizer")
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):  # keep tokenizer.json (+ config) only
        (tmp_path / "new" / "tokenizer" / name).unlink(missing_ok=True)
    assert "tokenizer.json" in os.listdir(tmp_path / "new" / "tokenizer")
    new = load_tokenizer(tmp_path / "new")
    assert hub.model_max_length == new.model_max_length == 77
    vocab = json.loads((tmp_path / "hub" / "tokenizer" / "vocab.json").read_text())
    for prompt in PROMPTS:
        a = hub(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        b = new(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert a == b and len(a) == 77, prompt
    ids = hub("a man surfing").input_ids
    assert vocab["man</w>"] in ids and vocab["sur"] in ids and vocab["ing</w>"] in ids  # merges applied
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]


def test_tokenizer_errors(tmp_path):
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"vocab\.json \+ merges\.txt or tokenizer\.json.*\['vocab\.json'\]"):
        load_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="subfolder='tok'"):
        load_tokenizer(tmp_path, subfolder="tok")

"""videofusion.models.clip: our CLIP text model against transformers' CLIPTextModel (the oracle), on tiny random
configs and the demo model's folder, fp32 and fp16; its files in both directions."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from helpers import TINY_TEXT
from safetensors.torch import load_file, save_file

from videofusion.demo import DEMO_MODEL_PATH
from videofusion.models.clip import CLIPTextConfig, CLIPTextModel
from videofusion.models.text import load_text_encoder, text_backend

IDS = torch.tensor([[512, 5, 9, 300, 513, 513, 513], [512, 7, 513, 513, 513, 513, 513]])  # bos ... eos, padded
RIGHT = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0, 0]])  # the tokenizer's attention mask
LEFT = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]])  # rows with no visible key at the start


def _transformers(**overrides):
    from transformers import CLIPTextConfig as Config
    from transformers import CLIPTextModel as Model
    torch.manual_seed(0)
    return Model(Config(**{**TINY_TEXT, **overrides})).eval()


def _worst(ref, ours) -> float:
    """Largest absolute difference over the last hidden state, the pooled output and every hidden state."""
    pairs = [(ref.last_hidden_state, ours.last_hidden_state), (ref.pooler_output, ours.pooler_output),
             *zip(ref.hidden_states, ours.hidden_states)]
    assert len(ref.hidden_states) == len(ours.hidden_states)
    return max(float((a.float() - b.float()).abs().max()) for a, b in pairs)


@pytest.mark.parametrize("overrides", [
    {},  # gelu, eos 513 (pooled at the first eos)
    {"hidden_act": "quick_gelu", "num_hidden_layers": 3},
    {"hidden_act": "gelu_new", "eos_token_id": 2},  # old configs: pooled at the highest id
    {"hidden_act": "gelu_pytorch_tanh", "num_attention_heads": 2, "max_position_embeddings": 7},
])
def test_tiny_configs_match_transformers(overrides):
    ref = _transformers(**overrides)
    ours = CLIPTextModel(**{**TINY_TEXT, **overrides}).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the same keys, nothing renamed
    with torch.no_grad():
        for dtype in (torch.float32, torch.float16):
            ref.to(dtype), ours.to(dtype)
            for mask in (None, RIGHT, LEFT):
                r = ref(IDS, attention_mask=mask, output_hidden_states=True)
                o = ours(IDS, attention_mask=mask, output_hidden_states=True)
                assert _worst(r, o) <= 1e-5, (dtype, mask)
            # the pipeline's clip_skip path: an earlier hidden state through the final layer norm
            hidden = ours(IDS, output_hidden_states=True).hidden_states[-2]
            torch.testing.assert_close(ours.text_model.final_layer_norm(hidden),
                                       ref.final_layer_norm(ref(IDS, output_hidden_states=True).hidden_states[-2]),
                                       atol=1e-5, rtol=0)
    assert ours(IDS)[0] is not None and len(ours(IDS, return_dict=False)) == 2  # (last_hidden_state, pooler_output)


def test_the_demo_folder_matches_transformers():
    from transformers import CLIPTextModel as Model
    ref = Model.from_pretrained(DEMO_MODEL_PATH / "text_encoder").eval()
    for dtype in (torch.float32, torch.float16):
        ours = load_text_encoder(DEMO_MODEL_PATH, torch_dtype=dtype)
        assert isinstance(ours, CLIPTextModel) and ours.dtype == dtype and not ours.training
        ids = torch.tensor([[602, 3, 40, 17, 603] + [603] * 11, [602, 9, 603] + [603] * 13])
        with torch.no_grad():
            assert _worst(ref.to(dtype)(ids, output_hidden_states=True), ours(ids, output_hidden_states=True)) <= 1e-5


def test_transformers_4_checkpoints_load(tmp_path):
    """Hub checkpoints (written by transformers 4): keys prefixed text_model., the position_ids buffer saved,
    torch_dtype in config.json."""
    ref = _transformers(eos_token_id=2)
    ref.save_pretrained(tmp_path)
    state = {"text_model." + k: v for k, v in load_file(tmp_path / "model.safetensors").items()}
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    save_file(state, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    config["torch_dtype"] = config.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = load_text_encoder(tmp_path, subfolder=None)
    with torch.no_grad():
        assert _worst(ref(IDS, output_hidden_states=True), ours(IDS, output_hidden_states=True)) == 0


def test_save_loads_in_transformers_and_back(tmp_path):
    from transformers import CLIPTextModel as Model
    ours = load_text_encoder(DEMO_MODEL_PATH)
    ours.save_pretrained(tmp_path / "plain")
    copy.deepcopy(ours).half().save_pretrained(tmp_path / "fp16", variant="fp16")
    ours.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert sorted(os.listdir(tmp_path / "fp16")) == ["config.json", "model.fp16.safetensors"]
    assert "pytorch_model.bin" in os.listdir(tmp_path / "bin")
    ids = torch.tensor([[602, 3, 40, 17, 603, 603]])
    with torch.no_grad():
        expected = ours(ids, output_hidden_states=True)
        for folder, variant in (("plain", None), ("fp16", "fp16")):
            theirs = Model.from_pretrained(tmp_path / folder, variant=variant).float()
            assert _worst(theirs(ids, output_hidden_states=True), expected) <= (1e-5 if variant is None else 5e-2)
            again = CLIPTextModel.from_pretrained(tmp_path / folder, variant=variant)
            assert again.dtype == (torch.float32 if variant is None else torch.float16)  # config.json's dtype
            assert again.float().state_dict().keys() == ours.state_dict().keys()
        from_bin = load_text_encoder(tmp_path / "bin", subfolder=None)
        assert _worst(from_bin(ids, output_hidden_states=True), expected) == 0
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    assert config["model_type"] == "clip_text_model" and config["architectures"] == ["CLIPTextModel"]


def test_a_fresh_model_and_errors(tmp_path):
    fresh = CLIPTextModel.from_config(dict(TINY_TEXT))
    assert float(fresh.get_input_embeddings().weight.detach().std()) == pytest.approx(0.02, rel=0.2)
    assert dict(fresh.config)["vocab_size"] == 600 and fresh.text_model is fresh
    with pytest.raises(ValueError, match=r"hidden_act='gelu_fancy'.*quick_gelu"):
        CLIPTextConfig(hidden_act="gelu_fancy")
    with pytest.raises(ValueError, match="num_attention_heads=3.*hidden_size=16"):
        CLIPTextConfig(hidden_size=16, num_attention_heads=3)
    with pytest.raises(ValueError, match="input_ids: 78 tokens.*max_position_embeddings=77"):
        fresh(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(TypeError, match="input_ids: expected an integer tensor"):
        fresh(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(batch, 4\)"):
        fresh(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5))
    fresh.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("text_model.final_layer_norm.bias")
    state["text_model.extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="1 missing keys: final_layer_norm.bias; 1 unexpected keys: extra.weight"):
        load_text_encoder(tmp_path, subfolder=None)


def test_the_backend_variable(monkeypatch):
    monkeypatch.setenv("VIDEOFUSION_CLIP", "transformers")
    assert type(load_text_encoder(DEMO_MODEL_PATH)).__module__.startswith("transformers")
    monkeypatch.setenv("VIDEOFUSION_CLIP", "tf")
    with pytest.raises(ValueError, match=r"VIDEOFUSION_CLIP: must be one of \['videofusion', 'transformers'\], "
                                         "got 'tf'"):
        load_text_encoder(DEMO_MODEL_PATH)
    monkeypatch.delenv("VIDEOFUSION_CLIP")
    assert text_backend() == "videofusion"

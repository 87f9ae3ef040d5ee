"""LoRA adapters on the pipeline against peft (the oracle) on diffusers' UNet3D and transformers' CLIP text
model: unfused, fused, two weighted adapters, the per-call scale, unload; and the API's errors."""
import numpy as np
import pytest
import torch

from lora_oracle import (TEXT_TARGETS, UNET_TARGETS, add_peft_adapter, diffusers_unet, peft_activate, peft_layers,
                         save_diffusers_lora, transformers_text_encoder, unet_inputs)
from videofusion import TextToVideoSDPipeline
from videofusion.errors import SettingError

TOL = 1e-5


@pytest.fixture(scope="module")
def oracle(tiny_pipeline_dir, tmp_path_factory, models_one_thread):
    """diffusers' UNet and transformers' text encoder with two peft adapters each ("a", "b"), and the two
    adapters saved as diffusers LoRA files."""
    unet, text = diffusers_unet(tiny_pipeline_dir), transformers_text_encoder(tiny_pipeline_dir)
    files = {}
    for i, name in enumerate(("a", "b")):
        u_sd, u_cfg = add_peft_adapter(unet, name, UNET_TARGETS, seed=10 + i, alpha=8 if i == 0 else 2,
                                       alpha_pattern={"to_q": 3} if i == 0 else None)
        t_sd, t_cfg = add_peft_adapter(text, name, TEXT_TARGETS, seed=20 + i, r=2, alpha=4)
        files[name] = save_diffusers_lora(str(tmp_path_factory.mktemp(f"lora-{name}")), u_sd, u_cfg, t_sd, t_cfg)
    return unet, text, files


@pytest.fixture()
def pipe(tiny_pipeline_dir, models_one_thread):
    return TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)


def outputs(unet, text):
    x, t, ctx = unet_inputs()
    ids = torch.tensor([[512, 40, 41, 42, 513, 513]])
    with torch.no_grad():
        return unet(x, t, ctx).sample, text(ids)[0]


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_unfused_and_fused_match_peft(oracle, pipe):
    unet, text, files = oracle
    pipe.load_lora_weights(files["a"])
    assert pipe.get_active_adapters() == ["default_0"]
    peft_activate(unet, {"a": 1.0}), peft_activate(text, {"a": 1.0})
    ref_unet, ref_text = outputs(unet, text)
    ours_unet, ours_text = outputs(pipe.unet, pipe.text_encoder)
    base_unet, _ = outputs(diffusers_unet_base(unet), text)
    assert max_diff(ref_unet, base_unet) > 100 * TOL  # the adapter changes the output
    assert max_diff(ours_unet, ref_unet) < TOL and max_diff(ours_text, ref_text) < TOL
    pipe.fuse_lora()
    fused_unet, fused_text = outputs(pipe.unet, pipe.text_encoder)
    assert max_diff(fused_unet, ref_unet) < TOL and max_diff(fused_text, ref_text) < TOL
    for layer in peft_layers(unet):  # peft's merge: the same numbers again
        layer.merge(adapter_names=["a"])
    merged_unet, _ = outputs(unet, text)
    for layer in peft_layers(unet):
        layer.unmerge()
    assert max_diff(fused_unet, merged_unet) < TOL


def diffusers_unet_base(unet):
    """The peft-injected diffusers UNet with its adapters switched off (a context would be tidier; the
    fixture's adapters are re-activated by each test)."""
    for layer in peft_layers(unet):
        layer.set_adapter([])
    return unet


def test_two_weighted_adapters_match_peft(oracle, pipe):
    unet, text, files = oracle
    pipe.load_lora_weights(files["a"], adapter_name="a")
    pipe.load_lora_weights(files["b"], adapter_name="b")
    pipe.set_adapters(["a", "b"], [0.7, -0.4])
    assert pipe.get_active_adapters() == ["a", "b"]
    assert pipe.get_list_adapters() == {"unet": ["a", "b"], "text_encoder": ["a", "b"]}
    from videofusion import VideoToVideoSDPipeline
    assert VideoToVideoSDPipeline(**pipe.components).get_active_adapters() == ["a", "b"]  # adapters live on the models
    peft_activate(unet, {"a": 0.7, "b": -0.4}), peft_activate(text, {"a": 0.7, "b": -0.4})
    ref_unet, ref_text = outputs(unet, text)
    ours_unet, ours_text = outputs(pipe.unet, pipe.text_encoder)
    assert max_diff(ours_unet, ref_unet) < TOL and max_diff(ours_text, ref_text) < TOL
    pipe.fuse_lora()
    fused_unet, fused_text = outputs(pipe.unet, pipe.text_encoder)
    assert max_diff(fused_unet, ref_unet) < TOL and max_diff(fused_text, ref_text) < TOL
    pipe.unfuse_lora()
    pipe.set_adapters("b")  # one adapter again, weight 1
    peft_activate(unet, {"b": 1.0})
    ref_unet, _ = outputs(unet, text)
    assert max_diff(outputs(pipe.unet, pipe.text_encoder)[0], ref_unet) < TOL


def frames(pipe, **kwargs):
    return pipe("a red circle", num_frames=2, num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).frames


def test_call_scale_zero_is_no_adapter_and_unload_restores_bits(oracle, pipe):
    _, _, files = oracle
    base_state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base_text = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    base = frames(pipe)
    pipe.load_lora_weights(files["a"])
    with_lora = frames(pipe)
    assert np.abs(with_lora - base).max() > 1e-4
    np.testing.assert_array_equal(frames(pipe, cross_attention_kwargs={"scale": 0.0}), base)
    half = frames(pipe, cross_attention_kwargs={"scale": 0.5})
    pipe.set_adapters("default_0", 0.5)  # the call's scale multiplies the adapter's weight
    np.testing.assert_allclose(frames(pipe), half, atol=1e-6)
    np.testing.assert_allclose(frames(pipe, cross_attention_kwargs={"scale": 2.0}), with_lora, atol=1e-4)
    pipe.set_adapters("default_0", 1.0)
    np.testing.assert_array_equal(frames(pipe), with_lora)  # the call's scale did not stay
    pipe.fuse_lora(lora_scale=0.5)
    np.testing.assert_allclose(frames(pipe), half, atol=1e-4)
    pipe.unload_lora_weights()
    assert pipe.get_active_adapters() == [] and pipe.get_list_adapters() == {}
    for name, value in pipe.unet.state_dict().items():
        assert torch.equal(value, base_state[name]), name
    for name, value in pipe.text_encoder.state_dict().items():
        assert torch.equal(value, base_text[name]), name
    np.testing.assert_array_equal(frames(pipe), base)


def test_delete_and_refusals(oracle, pipe):
    _, _, files = oracle
    pipe.load_lora_weights(files["a"], adapter_name="style")
    with pytest.raises(SettingError, match="adapter_name: must be a name not in use.*got 'style'"):
        pipe.load_lora_weights(files["b"], adapter_name="style")
    with pytest.raises(SettingError, match=r"adapter_names: must be loaded adapters.*got \['nope'\]"):
        pipe.set_adapters(["nope"])
    with pytest.raises(SettingError, match="adapter_weights"):
        pipe.set_adapters(["style"], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"cross_attention_kwargs: keys \['temb'\] go to attention processors"):
        frames(pipe, cross_attention_kwargs={"temb": 1})
    with pytest.raises(SettingError, match=r"cross_attention_kwargs\['scale'\].*finite"):
        frames(pipe, cross_attention_kwargs={"scale": float("nan")})
    pipe.fuse_lora()
    with pytest.raises(SettingError, match="unfuse_lora"):
        pipe.delete_adapters("style")
    pipe.unfuse_lora()
    pipe.delete_adapters("style")
    assert pipe.get_list_adapters() == {}


def test_fused_projections_follow_fused_adapters_and_refuse_unfused(oracle, pipe):
    _, _, files = oracle
    pipe.load_lora_weights(files["a"])
    reference = frames(pipe)
    pipe.fuse_qkv_projections()
    with pytest.raises(SettingError, match="fuse_lora"):  # the hooks would not see the fused q/k/v
        frames(pipe)
    pipe.fuse_lora()  # the fused copies are rebuilt from the fused weights
    np.testing.assert_allclose(frames(pipe), reference, atol=1e-4)
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    pipe.unfuse_qkv_projections()
    base = frames(pipe)
    pipe.fuse_qkv_projections()
    np.testing.assert_allclose(frames(pipe), base, atol=1e-5)  # unload rebuilt them from the base weights


def test_mismatched_files_name_the_layers(pipe, tmp_path):
    from safetensors.torch import save_file
    bad = {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 16),
           "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(16, 2),
           "unet.down_blocks.9.nothing.lora_A.weight": torch.zeros(2, 16),
           "unet.down_blocks.9.nothing.lora_B.weight": torch.zeros(16, 2)}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(SettingError, match=r"down_blocks\.9\.nothing: no such layer"):
        pipe.load_lora_weights(tmp_path / "bad.safetensors")
    wrong = {k.replace("lora_A.weight", "lora_A.weight"): (torch.zeros(2, 7) if "lora_A" in k else v)
             for k, v in list(bad.items())[:2]}
    save_file(wrong, tmp_path / "wrong.safetensors")
    with pytest.raises(SettingError, match=r"to_q: down \(2, 7\).*expected \(2, 16\)"):
        pipe.load_lora_weights(tmp_path / "wrong.safetensors")
    save_file({"unet.x.weight": torch.zeros(1)}, tmp_path / "model.safetensors")
    with pytest.raises(SettingError, match="no known LoRA format.*unet.x.weight"):
        pipe.load_lora_weights(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no file or folder"):
        pipe.load_lora_weights(tmp_path / "missing.safetensors")
    assert pipe.get_list_adapters() == {}  # nothing half-loaded

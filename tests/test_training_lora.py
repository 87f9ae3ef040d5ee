"""LoRA training: adapters only, saved in diffusers' format, resumed exactly, loaded by the pipeline."""
import json

import pytest
import torch
from safetensors import safe_open

from videofusion import TextToVideoSDPipeline
from videofusion.training.train import LORA_FILE, TrainConfig, train


def config(tiny_pipeline_dir, out, **kw):
    base = dict(model=tiny_pipeline_dir, output_dir=str(out), data={"shapes": 6, "seed": 0}, num_frames=4,
                height=16, width=16, steps=4, batch_size=2, learning_rate=1e-2, train_text_encoder=True,
                ema_decay=None, checkpoint_every=2, noise_ratio=0.5, seed=3, lora_rank=4, lora_alpha=8,
                lora_target_modules=["to_q", "to_v", "proj_in", "conv1"])
    return TrainConfig(**{**base, **kw})


def factors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_lora_training_saves_adapters_only_resumes_exactly_and_loads(tiny_pipeline_dir, tmp_path, models_one_thread):
    straight = train(config(tiny_pipeline_dir, tmp_path / "straight"), progress=False)
    train(config(tiny_pipeline_dir, tmp_path / "resumed", steps=2), progress=False)
    train(config(tiny_pipeline_dir, tmp_path / "resumed"), progress=False)
    (a, meta), (b, _) = factors(tmp_path / "straight" / LORA_FILE), factors(tmp_path / "resumed" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed: the same adapters
    assert not (tmp_path / "straight" / "model").exists()  # the model itself is not saved again
    packed = json.loads(meta["lora_adapter_metadata"])
    assert packed["unet.r"] == 4 and packed["unet.lora_alpha"] == 8 and packed["text_encoder.r"] == 4
    layers = {k.split(".lora_")[0] for k in a}
    assert any(k.startswith("unet.") and k.endswith("attn1.to_q") for k in layers)
    assert any(".temp_convs." not in k and k.endswith("resnets.0.conv1") for k in layers)  # a 2-D convolution
    assert any(k.startswith("text_encoder.") and k.endswith("self_attn.q_proj") for k in layers)
    assert not any(k.endswith("to_k") for k in layers)
    assert all(a[k].abs().max() > 0 for k in a if "lora_B" in k)  # B left zero-init: trained
    assert straight["steps"] == 4

    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    kwargs = dict(num_frames=2, num_inference_steps=2, height=16, width=16, output_type="np")
    before = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.load_lora_weights(tmp_path / "straight" / "lora")
    after = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert abs(after - before).max() > 1e-4
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())  # base weights untouched


def test_lora_config_errors(tiny_pipeline_dir, tmp_path):
    with pytest.raises(ValueError, match="lora_rank"):
        TrainConfig(model="m", output_dir="o", data="d", lora_rank=0)
    with pytest.raises(ValueError, match="lora_alpha.*with lora_rank"):
        TrainConfig(model="m", output_dir="o", data="d", lora_alpha=4)
    with pytest.raises(ValueError, match="lora_target_modules"):
        TrainConfig(model="m", output_dir="o", data="d", lora_rank=2, lora_target_modules=[])
    from videofusion.errors import SettingError
    with pytest.raises(SettingError, match="lora_target_modules.*to_qq"):
        train(config(tiny_pipeline_dir, tmp_path / "t", lora_target_modules=["to_qq"]), progress=False)

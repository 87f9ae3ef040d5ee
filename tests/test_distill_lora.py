"""videofusion distill with a LoRA student: only adapters train (the teacher's folder untouched), saved in
diffusers' format, loaded into the teacher's pipeline with an LCMScheduler for 4-step sampling; a resumed run
ends with the adapters of an uninterrupted one; a LoRA student with embedded guidance is refused early."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import unet_state
from safetensors import safe_open

from videofusion.training.distill import DistillConfig, distill
from videofusion.training.train import LORA_FILE, LORA_TARGETS


@pytest.fixture(autouse=True)
def _one_thread(models_one_thread):
    yield


def config(tiny_pipeline_dir, out, **kw) -> DistillConfig:
    base = dict(model=tiny_pipeline_dir, output_dir=str(out), data={"shapes": 4, "seed": 0}, num_frames=4, height=16,
                width=16, steps=4, batch_size=2, learning_rate=1e-2, checkpoint_every=2, seed=3, student="lora",
                lora_rank=4, lora_alpha=8, embed_guidance=False, guidance_scale=4.0, skip_steps=100, noise_ratio=0.5)
    return DistillConfig(**{**base, **kw})


def factors(path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()



def test_a_lora_student_saves_adapters_only_and_samples_in_four_steps(tiny_pipeline_dir, tmp_path):
    from videofusion import LCMScheduler, TextToVideoSDPipeline
    before = unet_state(tiny_pipeline_dir)
    out = tmp_path / "d"
    summary = distill(config(tiny_pipeline_dir, out), progress=False)
    assert summary["output"] == str(out / LORA_FILE) and np.isfinite(summary["final_loss_avg50"])
    assert not (out / "model").exists()  # no copy of the teacher
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "log.json", "lora", "loss.png", "scheduler"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "unet" not in state and state["lora"].keys() == state["target"].keys()
    weights, meta = factors(out / LORA_FILE)
    packed = json.loads(meta["lora_adapter_metadata"])
    assert packed["unet.r"] == 4 and packed["unet.lora_alpha"] == 8
    assert all(k.startswith("unet.") and k.endswith(("lora_A.weight", "lora_B.weight")) for k in weights)
    layers = {k.split(".lora_")[0] for k in weights}
    assert all(layer.endswith(LORA_TARGETS) for layer in layers) and any(k.endswith("to_out.0") for k in layers)
    assert all(weights[k].abs().max() > 0 for k in weights if "lora_B" in k)  # trained from zero
    after = unet_state(tiny_pipeline_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the teacher's folder is untouched

    pipe = TextToVideoSDPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config, original_inference_steps=10)  # 1000 / 100
    saved = LCMScheduler.from_pretrained(str(out), subfolder="scheduler").config
    assert all(saved[k] == v for k, v in pipe.scheduler.config.items() if not k.startswith("_"))
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    kwargs = dict(num_frames=4, num_inference_steps=4, guidance_scale=1.0, output_type="np")
    plain = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).frames
    pipe.load_lora_weights(out / "lora")
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    frames = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).frames
    assert calls == [1] * 4  # 4 steps, one UNet call each: the guidance is distilled in
    assert frames.shape == (1, 4, 16, 16, 3) and np.isfinite(frames).all() and abs(frames - plain).max() > 1e-4
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())


def test_resume_gives_the_same_adapters_as_an_uninterrupted_run(tiny_pipeline_dir, tmp_path):
    straight = distill(config(tiny_pipeline_dir, tmp_path / "straight", ema_decay=0.9), progress=False)
    distill(config(tiny_pipeline_dir, tmp_path / "resumed", steps=2, ema_decay=0.9), progress=False)
    resumed = distill(config(tiny_pipeline_dir, tmp_path / "resumed", ema_decay=0.9), progress=False)
    (a, _), (b, _) = factors(tmp_path / "straight" / LORA_FILE), factors(tmp_path / "resumed" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["final_loss_avg50"] == straight["final_loss_avg50"]
    sa = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert sa["step"] == sb["step"] == 4
    for key in ("lora", "target"):  # the student's adapters and the target network's EMA of them
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key])
    assert any(not torch.equal(sa["lora"][k], sa["target"][k]) for k in sa["lora"])  # the target lags


def test_the_teacher_and_the_target_do_not_see_the_students_adapters(tiny_pipeline_dir, tmp_path, monkeypatch):
    """The teacher's call has no adapter on; the target's has the target adapter (the student's at step 0)."""
    from videofusion.models import UNet3DConditionModel
    seen = []
    original = UNet3DConditionModel.forward

    def forward(self, *args, **kwargs):
        adapters = self.lora_adapters
        seen.append(list(adapters.active) if adapters.enabled else [])
        return original(self, *args, **kwargs)
    monkeypatch.setattr(UNet3DConditionModel, "forward", forward)
    distill(config(tiny_pipeline_dir, tmp_path / "o", steps=1, checkpoint_every=1), progress=False)
    assert seen == [["student"], [], ["target"]]


@pytest.mark.parametrize("change,words", [
    (dict(embed_guidance=True), ["student", "embed_guidance", "guidance_scale"]),
    (dict(guidance_scale=[2.0, 8.0]), ["student", "embed_guidance", "guidance_scale"]),
    (dict(lora_rank=None), ["lora_rank"]),
    (dict(lora_alpha=0), ["lora_alpha"]),
    (dict(lora_target_modules=[]), ["lora_target_modules"]),
    (dict(student="unet"), ["lora_rank"]),
])
def test_bad_lora_configs_are_refused_before_any_weights_load(tiny_pipeline_dir, tmp_path, monkeypatch, change,
                                                              words):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the config was checked")
    monkeypatch.setattr("videofusion.pipelines.text_to_video.TextToVideoSDPipeline.from_pretrained", no_loading)
    with pytest.raises(ValueError) as error:
        distill(config(tiny_pipeline_dir, tmp_path / "bad", **change), progress=False)
    message = str(error.value)
    assert message.startswith(words[0] + ":") and all(w in message for w in words) and "\n" not in message
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_the_command_prints_the_lora_it_wrote(tiny_pipeline_dir, tmp_path, capsys):
    from videofusion.apps.main import main
    path = tmp_path / "d.toml"
    path.write_text(f'model = "{tiny_pipeline_dir}"\noutput_dir = "{tmp_path / "o"}"\ndata = {{ shapes = 2 }}\n'
                    'num_frames = 4\nheight = 16\nwidth = 16\nsteps = 1\nskip_steps = 250\nstudent = "lora"\n'
                    'lora_rank = 2\nembed_guidance = false\nguidance_scale = 4.0\n')
    assert main(["distill", str(path), "--no-resume", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "o" / LORA_FILE) in printed and (tmp_path / "o" / LORA_FILE).is_file()

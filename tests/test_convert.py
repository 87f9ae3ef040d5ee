"""An original release folder, opened by DiffusionPipeline.from_pretrained (converted in memory) and written
as a diffusers folder by ``videofusion convert``: the same video both ways, and the written folder loads in
diffusers 0.42.1 with the same frames. The release is tiny and random (test_convert_oracles.write_release);
the models' parity with the original code is test_convert_oracles'."""
from __future__ import annotations

import json
import tempfile

import numpy as np
import pytest
import torch
from helpers import tiny_clip_tokenizer
from safetensors import safe_open
from test_convert_oracles import RELEASE_CONTEXT, open_clip_module, write_release

from videofusion import DiffusionPipeline, TextToVideoSDPipeline
from videofusion.apps.main import main
from videofusion.models import AutoencoderKL, UNet3DConditionModel
from videofusion.models.text import load_tokenizer
from videofusion.schedulers import DDIMScheduler

CALL = dict(height=32, width=32, num_frames=4, num_inference_steps=3, guidance_scale=7.5, output_type="np")
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("original") / "release")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A CLIP tokenizer folder (the tiny byte-level one): the --tokenizer / tokenizer= path, which needs no
    OpenCLIP vocabulary."""
    folder = tmp_path_factory.mktemp("tokenizer")
    tiny_clip_tokenizer(str(folder / "source")).save_pretrained(str(folder / "tokenizer"))
    return folder / "tokenizer"


@pytest.fixture(scope="module")
def converted(release, tokenizer_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("converted") / "diffusers"
    assert main(["convert", str(release), str(dst), "--tokenizer", str(tokenizer_dir)]) == 0
    return dst


def frames(pipe, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **CALL).frames


def test_from_pretrained_converts_the_release_in_memory(release, tokenizer_dir, monkeypatch):
    before = sorted(p.name for p in release.iterdir())
    tokenizer = load_tokenizer(tokenizer_dir, None)

    def no_temporary_files(*args, **kwargs):
        raise AssertionError("the conversion wrote a temporary file")
    for name in ("mkstemp", "mkdtemp", "NamedTemporaryFile", "TemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, no_temporary_files)
    pipe = DiffusionPipeline.from_pretrained(str(release), tokenizer=tokenizer)
    monkeypatch.undo()
    assert sorted(p.name for p in release.iterdir()) == before  # nothing written beside the originals
    assert isinstance(pipe, TextToVideoSDPipeline)
    assert isinstance(pipe.unet, UNet3DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.unet.config.cross_attention_dim == RELEASE_CONTEXT and pipe.vae_scale_factor == 2
    assert pipe.text_encoder.config.num_hidden_layers == 2  # 3 blocks in the file: the penultimate's output
    scheduler = pipe.scheduler.config
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"], scheduler["prediction_type"]) \
        == ("scaled_linear", 0.00085, 0.012, "epsilon")
    assert all(p.dtype == torch.float32 for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    half = DiffusionPipeline.from_pretrained(str(release), tokenizer=pipe.tokenizer,
                                             torch_dtype={"unet": torch.float16, "default": torch.float32})
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32


def test_a_mean_type_of_v_gives_a_v_prediction_scheduler(release, tokenizer_dir, tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for f in release.iterdir():
        (folder / f.name).symlink_to(f)
    config = json.loads((release / "configuration.json").read_text())
    config["model"]["model_cfg"]["mean_type"] = "v"
    (folder / "configuration.json").unlink()
    (folder / "configuration.json").write_text(json.dumps(config))
    pipe = DiffusionPipeline.from_pretrained(str(folder), tokenizer=load_tokenizer(tokenizer_dir, None))
    assert pipe.scheduler.config["prediction_type"] == "v_prediction"


def test_convert_writes_a_folder_that_makes_the_video_the_release_makes(release, tokenizer_dir, converted, capsys):
    index = json.loads((converted / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"
    assert {k: v[1] for k, v in index.items() if not k.startswith("_")} == {
        "unet": "UNet3DConditionModel", "vae": "AutoencoderKL", "text_encoder": "CLIPTextModel",
        "tokenizer": "CLIPTokenizer", "scheduler": "DDIMScheduler"}
    from_release = DiffusionPipeline.from_pretrained(str(release), tokenizer=load_tokenizer(tokenizer_dir, None))
    from_folder = DiffusionPipeline.from_pretrained(str(converted))
    a, b = frames(from_release), frames(from_folder)
    assert a.shape == (1, 4, 32, 32, 3) and a.std() > 1e-3
    np.testing.assert_array_equal(a, b)


def test_diffusers_loads_the_converted_folder_and_gives_our_frames(converted):
    import diffusers
    theirs = diffusers.TextToVideoSDPipeline.from_pretrained(str(converted))
    theirs.set_progress_bar_config(disable=True)
    expected = theirs(PROMPT, generator=torch.Generator().manual_seed(0), **CALL).frames
    got = frames(DiffusionPipeline.from_pretrained(str(converted)))
    assert np.abs(got - expected).max() < 5e-5, np.abs(got - expected).max()


def test_an_fp16_variant_is_written_in_half_precision_and_loads(release, tokenizer_dir, tmp_path, capsys):
    dst = tmp_path / "fp16"
    assert main(["convert", str(release), str(dst), "--variant", "fp16", "--tokenizer", str(tokenizer_dir)]) == 0
    assert str(dst) in capsys.readouterr().out
    path = dst / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    with safe_open(str(path), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert (dst / "text_encoder" / "model.fp16.safetensors").is_file()
    pipe = DiffusionPipeline.from_pretrained(str(dst), variant="fp16", torch_dtype=torch.float16)
    assert pipe.unet.dtype == torch.float16


def test_without_a_tokenizer_it_is_built_from_openclips_vocabulary_and_survives_saving(release, tmp_path):
    open_clip = open_clip_module()
    pipe = DiffusionPipeline.from_pretrained(str(release))
    prompts = ["Spiderman is surfing!", "a cat playing piano"]
    expected = open_clip.tokenize(prompts)
    pipe.save_pretrained(str(tmp_path / "saved"))
    import transformers
    for tokenizer in (pipe.tokenizer, load_tokenizer(tmp_path / "saved"),
                      transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "saved" / "tokenizer"))):
        ids = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        assert torch.equal(ids, expected)


def test_our_tokenizer_keeps_split_special_tokens_through_saving(release, tmp_path):
    open_clip = open_clip_module()
    pipe = DiffusionPipeline.from_pretrained(str(release))
    pipe.save_pretrained(str(tmp_path / "saved"))
    ours = load_tokenizer(tmp_path / "saved")
    ours.save_pretrained(str(tmp_path / "again" / "tokenizer"))
    again = load_tokenizer(tmp_path / "again")
    ids = again(["wow!"], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, open_clip.tokenize(["wow!"]))

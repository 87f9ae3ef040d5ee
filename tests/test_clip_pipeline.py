"""Our CLIP classes in pipelines: folders load them by default, transformers' objects passed in give the same
videos (clip_skip too), and saved folders load in transformers and diffusers."""
from __future__ import annotations

import json

import pytest
import torch

from videofusion import TextToVideoSDPipeline
from videofusion.demo import DEMO_MODEL_PATH
from videofusion.models.clip import CLIPTextModel
from videofusion.models.tokenizer import CLIPTokenizer

PROMPTS = ["a red circle moving left", "a blue square moving up"]


def _latents(pipe, **kwargs) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    generator = [torch.Generator().manual_seed(s) for s in (0, 1)]
    return pipe(PROMPTS, num_frames=2, num_inference_steps=2, output_type="latent", generator=generator,
                **kwargs).frames


@pytest.fixture(scope="module")
def transformers_components():
    from transformers import CLIPTextModel as Model
    from transformers import CLIPTokenizer as Tokenizer
    return {"text_encoder": Model.from_pretrained(DEMO_MODEL_PATH / "text_encoder").eval(),
            "tokenizer": Tokenizer.from_pretrained(DEMO_MODEL_PATH / "tokenizer")}


def test_folders_load_ours_and_transformers_objects_give_the_same_video(transformers_components):
    ours = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=torch.float32)
    assert isinstance(ours.text_encoder, CLIPTextModel) and isinstance(ours.tokenizer, CLIPTokenizer)
    theirs = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=torch.float32,
                                                   **transformers_components)
    built = TextToVideoSDPipeline(**{**ours.components, **transformers_components})
    assert type(theirs.text_encoder).__module__.startswith("transformers")
    for clip_skip in (None, 1):
        expected = _latents(ours, clip_skip=clip_skip)
        for other in (theirs, built):
            torch.testing.assert_close(_latents(other, clip_skip=clip_skip), expected, atol=1e-5, rtol=0)
    assert not torch.equal(_latents(ours, clip_skip=1), _latents(ours))  # clip_skip reads an earlier layer


def test_saved_pipeline_loads_in_diffusers_and_transformers(tmp_path, transformers_components):
    ours = TextToVideoSDPipeline.from_pretrained(str(DEMO_MODEL_PATH), torch_dtype=torch.float32)
    ours.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    import diffusers
    theirs = diffusers.TextToVideoSDPipeline.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert type(theirs.text_encoder).__module__.startswith("transformers")
    ids = theirs.tokenizer(PROMPTS, padding="max_length", max_length=theirs.tokenizer.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, ours.tokenizer(PROMPTS, padding="max_length", max_length=ours.tokenizer.model_max_length,
                                           truncation=True, return_tensors="pt").input_ids)
    with torch.no_grad():
        torch.testing.assert_close(theirs.text_encoder(ids)[0], ours.text_encoder(ids)[0], atol=1e-5, rtol=0)
        reference = transformers_components["text_encoder"](ids)[0]
        torch.testing.assert_close(ours.text_encoder(ids)[0], reference, atol=1e-5, rtol=0)
    again = TextToVideoSDPipeline.from_pretrained(str(tmp_path), torch_dtype=torch.float32)
    torch.testing.assert_close(_latents(again), _latents(ours), atol=0, rtol=0)

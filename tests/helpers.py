"""Builders of tiny random components, shared by the tests (diffusers is the oracle here only)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

TINY_UNET = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, cross_attention_dim=16,
                 attention_head_dim=4, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"), sample_size=8, in_channels=4, out_channels=4)
TINY_VAE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                sample_size=32, in_channels=3, out_channels=3)
TINY_TEXT = dict(hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                 vocab_size=600, max_position_embeddings=77, projection_dim=16, hidden_act="gelu",
                 bos_token_id=512, eos_token_id=513, pad_token_id=513)
BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """The script ``bench/<name>.py`` as a module (registered in ``sys.modules`` as ``bench_<name>``, which its
    dataclasses need), for tests that call its functions or ``main(argv)`` in-process."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def unet_state(folder) -> dict:
    """The state dict of ``folder``'s UNet as our loader reads it (to compare trained and saved weights)."""
    from videofusion.models import UNet3DConditionModel
    return UNet3DConditionModel.from_pretrained(str(folder), subfolder="unet").state_dict()


# smaller still, for the seed examples: they run fp16 on the CPU (slow kernels), 64 frames, 50 steps
MICRO_UNET = dict(TINY_UNET, block_out_channels=(8, 8), norm_num_groups=4, attention_head_dim=2, sample_size=4)
MICRO_VAE = dict(TINY_VAE, block_out_channels=(8, 8))
MS_SCHEDULER = dict(beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
                    num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False, steps_offset=1)


def write_tiny_clip_vocab(dirname: str) -> None:
    """A byte-level CLIP vocabulary with no merges: the real CLIPTokenizer code path, tiny files."""
    from videofusion.demo.tokenizer import byte_to_character
    chars = list(byte_to_character().values())
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(dirname, exist_ok=True)
    with open(os.path.join(dirname, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f)
    with open(os.path.join(dirname, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")


def tiny_clip_tokenizer(dirname: str, model_max_length: int = 77):
    from transformers import CLIPTokenizer
    write_tiny_clip_vocab(dirname)
    # from_pretrained reads vocab.json + merges.txt on transformers 4 and 5 alike (5 renamed the
    # constructor's file arguments and silently ignores the old names)
    tok = CLIPTokenizer.from_pretrained(dirname, model_max_length=model_max_length)
    assert len(tok) == 514, len(tok)
    return tok


def make_diffusers_pipeline_folder(out: str, seed: int = 0, variant: str | None = None,
                                   dtype: torch.dtype = torch.float32, unet: dict = TINY_UNET,
                                   vae: dict = TINY_VAE, max_length: int = 77) -> str:
    """Save a tiny random diffusers TextToVideoSDPipeline to ``out`` and return ``out``."""
    from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    unet = UNet3DConditionModel(**unet)
    vae = AutoencoderKL(**vae)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    tokenizer = tiny_clip_tokenizer(os.path.join(out, "_tok_src"), max_length)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=DDIMScheduler(**MS_SCHEDULER))
    pipe.to(dtype)
    pipe.save_pretrained(out, variant=variant)
    import shutil
    shutil.rmtree(os.path.join(out, "_tok_src"))
    return out

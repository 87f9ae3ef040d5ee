"""The original release's own model code as oracles for videofusion.convert: ModelScope's ``UNetSD`` and
autoencoder (``modelscope/models/multi_modal/video_synthesis/unet_sd.py`` / ``autoencoder.py``, loaded by
path: importing the ``modelscope`` package would pull in its whole stack) and OpenCLIP's text tower.

Our converted models must give the originals' outputs within 1e-5 (relative to the output's largest
value) at tiny configs with random weights; and every key of the published full-size layouts must map,
checked with both layouts built on the meta device. Also the helpers test_convert.py builds its tiny
original release with.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from videofusion.convert.keys import check_sources, take_sources
from videofusion.convert.release import scheduler_config
from videofusion.convert.text import empty_text_encoder, file_layers, is_unused, text_config
from videofusion.convert.tokenizer import clip_tokenizer
from videofusion.convert.unet import empty_unet, unet_config
from videofusion.convert.vae import autoencoder_weights, empty_vae, vae_config
from videofusion.io.loading import assign_state_dict

TOLERANCE = 1e-5
CONTEXT = 1024  # UNetSD fixes its decoder's cross-attention width at 1024 (the released text width)
TINY_MODEL_CFG = {  # configuration.json's model.model_cfg at a tiny size: levels 0-1 attend, level 2 does not
    "unet_in_dim": 4, "unet_dim": 32, "unet_y_dim": 32, "unet_context_dim": CONTEXT, "unet_out_dim": 4,
    "unet_dim_mult": [1, 2, 2], "unet_num_heads": 8, "unet_head_dim": 16, "unet_res_blocks": 2,
    "unet_attn_scales": [1, 0.5], "unet_dropout": 0.1, "temporal_attention": "True", "num_timesteps": 1000,
    "mean_type": "eps", "var_type": "fixed_small", "loss_type": "mse"}
TINY_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 32, "in_channels": 3, "out_ch": 3, "ch": 32,
                 "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
# the published damo-vilab/text-to-video-ms-1.7b configuration.json (model section) and the original code's
# autoencoder settings (text_to_video_synthesis_model.py)
PUBLISHED_MODEL = {
    "type": "latent-text-to-video-synthesis",
    "model_args": {"ckpt_clip": "open_clip_pytorch_model.bin", "ckpt_unet": "text2video_pytorch_model.pth",
                   "ckpt_autoencoder": "VQGAN_autoencoder.pth", "max_frames": 16, "tiny_gpu": 1},
    "model_cfg": {"unet_in_dim": 4, "unet_dim": 320, "unet_y_dim": 768, "unet_context_dim": 1024, "unet_out_dim": 4,
                  "unet_dim_mult": [1, 2, 4, 4], "unet_num_heads": 8, "unet_head_dim": 64, "unet_res_blocks": 2,
                  "unet_attn_scales": [1, 0.5, 0.25], "unet_dropout": 0.1, "temporal_attention": "True",
                  "num_timesteps": 1000, "mean_type": "eps", "var_type": "fixed_small", "loss_type": "mse"}}
PUBLISHED_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                      "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
REFERENCE = Path(__file__).resolve().parents[1] / "bench" / "reference" / "text-to-video-ms-1.7b.json"


# ------------------------------------------------------------------------------------------ the oracles' imports


def _groups(side: str) -> list[list[str]]:
    """``'b (h w) c'`` -> ``[['b'], ['h', 'w'], ['c']]`` (``()`` is an empty group of size 1)."""
    return [g[1:-1].split() if g.startswith("(") else [g] for g in re.findall(r"\([^)]*\)|\S+", side)]


def _einops(tensor: torch.Tensor, pattern: str, sizes: dict) -> torch.Tensor:
    lhs, rhs = (_groups(s) for s in pattern.split("->"))
    known = dict(sizes)
    for group, dim in zip(lhs, tensor.shape):
        unknown = [n for n in group if n not in known]
        if unknown:
            known[unknown[0]] = dim // math.prod(known[n] for n in group if n in known)
    names = [n for g in lhs for n in g]
    out = [n for g in rhs for n in g]
    x = tensor.reshape([known[n] for n in names]).permute([names.index(n) for n in out if n in names])
    for position, n in enumerate(out):  # repeat's new axes
        if n not in names:
            x = x.unsqueeze(position)
            x = x.expand(*x.shape[:position], known[n], *x.shape[position + 1:])
    return x.reshape([math.prod(known[n] for n in g) for g in rhs])


def _einops_module() -> types.ModuleType:
    """``einops.rearrange`` / ``repeat`` for the patterns unet_sd.py uses, where einops is not installed."""
    try:
        import einops
        return einops
    except ImportError:
        module = types.ModuleType("einops")
        module.rearrange = lambda tensor, pattern, **sizes: _einops(tensor, pattern, sizes)
        module.repeat = lambda tensor, pattern, **sizes: _einops(tensor, pattern, sizes)
        return module


def _modelscope_file(name: str):
    spec = importlib.util.find_spec("modelscope")  # finds the package without importing it
    if spec is None:
        pytest.skip("modelscope is not installed (pip install modelscope==1.40.2)")
    path = Path(spec.submodule_search_locations[0]) / "models" / "multi_modal" / "video_synthesis" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_original_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    saved = sys.modules.get("einops")
    sys.modules["einops"] = _einops_module()
    try:
        module_spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("einops", None)
        else:
            sys.modules["einops"] = saved
    return module


def original_unet_module():
    """ModelScope's unet_sd.py (``UNetSD``)."""
    return _modelscope_file("unet_sd")


def original_autoencoder_module():
    """ModelScope's autoencoder.py (``AutoencoderKL(ddconfig, embed_dim)``)."""
    return _modelscope_file("autoencoder")


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """Empty torchvision modules: open_clip imports torchvision's image transforms at its top, and the PyPI
    torchvision wheels do not load beside a CPU build of torch. The text tower never uses them."""
    class Anything(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return cls

    class Placeholder(metaclass=Anything):
        def __init__(self, *args, **kwargs):
            pass

    def getattr_(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Placeholder

    modules: dict[str, types.ModuleType] = {}
    for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
                 "torchvision.transforms.functional"):
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        module.__path__ = []
        module.__getattr__ = getattr_
        modules[name] = module
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(modules[parent], leaf, module)
    return modules


def open_clip_module():
    """The ``open_clip`` package (skips the test when it is not installed)."""
    if sys.modules.get("open_clip") is not None:
        return sys.modules["open_clip"]
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip_torch is not installed (pip install open_clip_torch==3.3.0)")
    importlib.import_module("transformers")  # decides torchvision's availability before any stand-in exists
    try:
        importlib.import_module("torchvision")
    except Exception:  # missing, or a wheel built for another torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = _torchvision_stand_in()
        sys.modules.update(stand_in)
        try:
            import open_clip
        finally:
            for name in stand_in:
                sys.modules.pop(name, None)
        return open_clip
    import open_clip
    return open_clip


# ------------------------------------------------------------------------------------------ random weights


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (the originals zero their output layers at init, which would hide a wrong
    mapping): norm scales near 1, everything else N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if p.ndim == 1 and name.endswith("weight"):
            p.copy_(1 + 0.1 * noise)
        elif p.ndim == 1:
            p.copy_(0.1 * noise)
        else:
            p.copy_(noise / math.sqrt(p[0].numel()))
    return module.eval()


def relative(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return ((ours.double() - reference.double()).abs().max() / reference.double().abs().max()).item()


def original_unet(model_cfg: dict, seed: int = 0):
    """ModelScope's UNetSD built as the original pipeline builds it from configuration.json, random weights."""
    c = model_cfg
    unet = original_unet_module().UNetSD(
        in_dim=c["unet_in_dim"], dim=c["unet_dim"], y_dim=c["unet_y_dim"], context_dim=c["unet_context_dim"],
        out_dim=c["unet_out_dim"], dim_mult=c["unet_dim_mult"], num_heads=c["unet_num_heads"],
        head_dim=c["unet_head_dim"], num_res_blocks=c["unet_res_blocks"], attn_scales=c["unet_attn_scales"],
        dropout=c["unet_dropout"], temporal_attention=c["temporal_attention"] == "True")
    return randomize(unet, seed)


def openclip_text_weights(vocab: int = 49408, width: int = 64, layers: int = 3, mlp: int = 128,
                          context: int = 77, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the layout of OpenCLIP's CLIP checkpoints (``open_clip_pytorch_model.bin``): the text
    tower's tensors at the top level, beside the image tower's and CLIP's projection and scale."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    sd = {"positional_embedding": rand(context, width, scale=0.01), "text_projection": rand(width, 32),
          "token_embedding.weight": rand(vocab, width, scale=0.02), "logit_scale": torch.tensor(4.6),
          "ln_final.weight": 1 + rand(width, scale=0.1), "ln_final.bias": rand(width, scale=0.1),
          "visual.conv1.weight": rand(8, 3, 4, 4), "visual.proj": rand(8, 32)}
    for i in range(layers):
        b = f"transformer.resblocks.{i}."
        sd.update({b + "ln_1.weight": 1 + rand(width, scale=0.1), b + "ln_1.bias": rand(width, scale=0.1),
                   b + "attn.in_proj_weight": rand(3 * width, width),
                   b + "attn.in_proj_bias": rand(3 * width, scale=0.1),
                   b + "attn.out_proj.weight": rand(width, width), b + "attn.out_proj.bias": rand(width, scale=0.1),
                   b + "ln_2.weight": 1 + rand(width, scale=0.1), b + "ln_2.bias": rand(width, scale=0.1),
                   b + "mlp.c_fc.weight": rand(mlp, width), b + "mlp.c_fc.bias": rand(mlp, scale=0.1),
                   b + "mlp.c_proj.weight": rand(width, mlp), b + "mlp.c_proj.bias": rand(width, scale=0.1)})
    return sd


RELEASE_CONTEXT = 64  # the tiny release's text width
RELEASE_MODEL_CFG = {**TINY_MODEL_CFG, "unet_context_dim": RELEASE_CONTEXT}


def write_release(folder: Path, seed: int = 0) -> Path:
    """A tiny original release folder: configuration.json, the UNet (UNetSD's keys), the autoencoder inside a
    latent-diffusion checkpoint (with a step count and another model's keys beside it, as released) and an
    OpenCLIP checkpoint (image tower included). UNetSD fixes its decoder's context width at the released
    1024; this release's text is 64 wide, so those projections keep their first 64 columns."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"framework": "pytorch", "task": "text-to-video-synthesis",
              "model": {**PUBLISHED_MODEL, "model_cfg": RELEASE_MODEL_CFG},
              "pipeline": {"type": "latent-text-to-video-synthesis"}}
    (folder / "configuration.json").write_text(json.dumps(config, indent=4))
    unet = original_unet({**RELEASE_MODEL_CFG, "unet_context_dim": RELEASE_CONTEXT}, seed).state_dict()
    unet = {k: v[:, :RELEASE_CONTEXT].contiguous() if v.ndim == 2 and v.shape[1] == CONTEXT else v
            for k, v in unet.items()}
    torch.save(unet, folder / "text2video_pytorch_model.pth")
    vae = randomize(original_autoencoder_module().AutoencoderKL(TINY_DDCONFIG, 4), seed + 1).state_dict()
    checkpoint = {"first_stage_model." + k: v for k, v in vae.items()}
    checkpoint["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(8, 4, 3, 3)
    torch.save({"state_dict": checkpoint, "global_step": 875000}, folder / "VQGAN_autoencoder.pth")
    torch.save(openclip_text_weights(width=RELEASE_CONTEXT, seed=seed + 2), folder / "open_clip_pytorch_model.bin")
    return folder


# ------------------------------------------------------------------------------------------ parity at tiny sizes


def test_the_unet_gives_unetsd_outputs_with_text_context_for_integer_and_batched_timesteps():
    original = original_unet(TINY_MODEL_CFG)
    unet, table = empty_unet(unet_config(TINY_MODEL_CFG, "configuration.json", vae_scale_factor=8))
    weights = original.state_dict()
    check_sources(weights, table, "text2video_pytorch_model.pth", "model_cfg")
    assign_state_dict(unet, take_sources(weights, table))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 16, 16, generator=g)  # (b, c, f, h, w)
    context = torch.randn(2, 7, CONTEXT, generator=g)
    with torch.no_grad():
        batched = relative(unet.eval()(x, torch.tensor([10, 900]), context).sample,
                           original(x, torch.tensor([10, 900]), context))
        integer = relative(unet(x, 500, context).sample, original(x, torch.tensor([500, 500]), context))
        other_context = relative(unet(x, 500, context.flip(0)).sample, original(x, torch.tensor([500, 500]), context))
    assert batched < TOLERANCE and integer < TOLERANCE, (batched, integer)
    assert other_context > 1e-2  # the text really steers the output


def test_the_autoencoder_encodes_and_decodes_as_the_original():
    original = randomize(original_autoencoder_module().AutoencoderKL(TINY_DDCONFIG, 4))
    weights = autoencoder_weights({"first_stage_model." + k: v for k, v in original.state_dict().items()})
    vae, table = empty_vae(vae_config(weights, "VQGAN_autoencoder.pth"))
    check_sources(weights, table, "VQGAN_autoencoder.pth", "its shapes")
    assign_state_dict(vae, take_sources(weights, table))
    g = torch.Generator().manual_seed(2)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1  # (b*f, 3, h, w) in [-1, 1]
    latents = torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        ours, theirs = vae.eval().encode(images).latent_dist, original.encode(images)
        errors = {"mean": relative(ours.mean, theirs.mean), "logvar": relative(ours.logvar, theirs.logvar),
                  "decode": relative(vae.decode(latents).sample, original.decode(latents))}
    assert max(errors.values()) < TOLERANCE, errors


def test_the_text_encoder_gives_the_original_pipelines_penultimate_openclip_embeddings():
    open_clip = open_clip_module()
    tower = randomize(open_clip.transformer.TextTransformer(context_length=77, vocab_size=49408, width=128, heads=2,
                                                            layers=3, output_dim=64, act_layer=torch.nn.GELU))
    weights = {**tower.state_dict(), "logit_scale": torch.tensor(4.6), "visual.proj": torch.zeros(8, 64)}
    encoder, table = empty_text_encoder(text_config(weights, "open_clip_pytorch_model.bin"))
    layers = file_layers(weights)
    check_sources(weights, table, "open_clip_pytorch_model.bin", "its shapes", lambda k: not is_unused(k, layers))
    assign_state_dict(encoder, take_sources(weights, table))
    prompts = ["Spiderman is surfing!", "a cat playing piano", ""]
    ids = clip_tokenizer()(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():  # the original: tokens -> residual blocks but the last -> ln_final
        def block_output(index):
            return tower.forward_intermediates(open_clip.tokenize(prompts), indices=[index], output_fmt="NLC",
                                               normalize_intermediates=True, intermediates_only=True)
        penultimate, last = (block_output(i)["text_intermediates"][0] for i in (layers - 2, layers - 1))
        ours = encoder.eval()(ids)[0]
    assert relative(ours, penultimate) < TOLERANCE, relative(ours, penultimate)
    assert relative(ours, last) > 1e-2


def test_the_tokenizer_gives_open_clip_tokenize_ids():
    open_clip = open_clip_module()
    prompts = ["a cat playing piano", "Spiderman is surfing!", "", "Hello, WORLD's  café 123 ünïcode ☃ it's",
               "word " * 100]
    ours = clip_tokenizer()(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    assert torch.equal(ours.input_ids, open_clip.tokenize(prompts))


# ------------------------------------------------------------------------------------------ the full-size layouts


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


def test_every_key_of_the_published_unet_maps_none_left_over_none_missing():
    config = unet_config(PUBLISHED_MODEL["model_cfg"], "configuration.json", vae_scale_factor=8)
    assert config == {"_class_name": "UNet3DConditionModel", **reference()["unet"]}
    assert scheduler_config(PUBLISHED_MODEL["model_cfg"], "configuration.json") == \
        {"_class_name": "DDIMScheduler", **reference()["scheduler"]}
    with torch.device("meta"):
        original = original_unet_module().UNetSD(
            in_dim=4, dim=320, y_dim=768, context_dim=1024, out_dim=4, dim_mult=[1, 2, 4, 4], num_heads=8,
            head_dim=64, num_res_blocks=2, attn_scales=[1, 0.5, 0.25], dropout=0.1, temporal_attention=True)
    weights = original.state_dict()
    _, table = empty_unet(config)
    check_sources(weights, table, "text2video_pytorch_model.pth", "the published model_cfg")
    assert {s.key for s in table.values()} == set(weights)  # none left over
    assert numel(s.shape for s in table.values()) == reference()["parameter_counts"]["unet"]


def test_every_key_of_the_published_autoencoder_maps_none_left_over_none_missing():
    with torch.device("meta"):
        original = original_autoencoder_module().AutoencoderKL(PUBLISHED_DDCONFIG, 4)
    weights = autoencoder_weights({"first_stage_model." + k: v for k, v in original.state_dict().items()})
    config = vae_config(weights, "VQGAN_autoencoder.pth")
    assert config == {"_class_name": "AutoencoderKL", **reference()["vae"]}
    _, table = empty_vae(config)
    check_sources(weights, table, "VQGAN_autoencoder.pth", "its shapes")
    assert {s.key for s in table.values()} == set(weights)
    assert numel(s.shape for s in table.values()) == reference()["parameter_counts"]["vae"]


def test_every_key_of_the_published_text_tower_maps_and_only_the_last_block_is_left_out():
    open_clip = open_clip_module()
    with torch.device("meta"):  # ViT-H-14's text tower
        tower = open_clip.transformer.TextTransformer(context_length=77, vocab_size=49408, width=1024, heads=16,
                                                      layers=24, output_dim=1024, act_layer=torch.nn.GELU)
    weights = {**tower.state_dict(), "logit_scale": torch.empty(())}
    config = text_config(weights, "open_clip_pytorch_model.bin")
    assert config == reference()["text_encoder"]
    _, table = empty_text_encoder(config)
    check_sources(weights, table, "open_clip_pytorch_model.bin", "its shapes", lambda k: not is_unused(k, 24))
    left_out = set(weights) - {s.key for s in table.values()}
    assert left_out == {k for k in weights if k.startswith("transformer.resblocks.23.")} | \
        {"text_projection", "logit_scale"}
    assert numel(torch.Size(t.shape) for t in take_sources(weights, table).values()) == \
        reference()["parameter_counts"]["text_encoder"]

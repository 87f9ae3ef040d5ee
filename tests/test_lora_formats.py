"""Each LoRA format, read from a file written the way its tool writes it, gives the UNet (and text encoder)
the numbers of the same adapter in diffusers' format, or of the tool's own math where diffusers has no form."""
import json
import os
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from helpers import TINY_UNET, make_diffusers_pipeline_folder
from lora_oracle import UNET_TARGETS, add_peft_adapter, diffusers_unet, transformers_text_encoder, unet_inputs
from videofusion import TextToVideoSDPipeline
from videofusion.errors import SettingError

IDS = torch.tensor([[512, 40, 41, 42, 513, 513]])


def run(unet, text=None):
    x, t, ctx = unet_inputs()
    with torch.no_grad():
        return unet(x, t, ctx).sample, (None if text is None else text(IDS)[0])


def close(a, b, tol=1e-5):
    return (a - b).abs().max().item() < tol


@pytest.fixture(scope="module")
def folder(tiny_pipeline_dir, models_one_thread):
    return tiny_pipeline_dir


def fresh(folder):
    return TextToVideoSDPipeline.from_pretrained(folder)


def with_diffusers_format(folder, state_dict, tmp_path, config=None):
    """Our pipeline with ``state_dict`` (peft layout, diffusers names, prefixed) saved as a diffusers file
    (the UNet's LoRA config, for its alpha, in diffusers' metadata)."""
    path = os.path.join(tmp_path, "reference.safetensors")
    metadata = None if config is None else {"lora_adapter_metadata": json.dumps(
        {"unet.r": config.r, "unet.lora_alpha": config.lora_alpha, "unet.alpha_pattern": config.alpha_pattern})}
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path, metadata=metadata)
    pipe = fresh(folder)
    pipe.load_lora_weights(path)
    return pipe


def test_peft_adapter_folder(folder, tmp_path):
    from peft import get_peft_model, get_peft_model_state_dict
    _, config = add_peft_adapter(diffusers_unet(folder), "default", UNET_TARGETS, seed=3, alpha=8)
    torch.manual_seed(3)
    peft_model = get_peft_model(diffusers_unet(folder), config)
    sd = get_peft_model_state_dict(peft_model)  # the adapter's numbers, diffusers' names
    peft_model.save_pretrained(tmp_path / "adapter")  # adapter_config.json + adapter_model.safetensors
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(tmp_path / "adapter"))
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path / "adapter")
    ours, _ = run(pipe.unet)
    assert close(ours, run(peft_model.eval())[0])
    reference = with_diffusers_format(folder, {f"unet.{k}": v for k, v in sd.items()}, tmp_path, config)
    assert close(ours, run(reference.unet)[0], 1e-6)


def test_old_attention_processor_keys(folder, tmp_path):
    """diffusers before 0.21 (``save_attn_procs``): ``<attention>.processor.to_q_lora.down.weight`` in a
    ``.bin``, no component prefix, alpha = rank."""
    unet = diffusers_unet(folder)
    sd, _ = add_peft_adapter(unet, "x", r".*attn[12]\.(to_q|to_k|to_v|to_out\.0)", seed=4, alpha=4)
    old = {}
    for key, value in sd.items():
        m = re.fullmatch(r"(.+)\.(to_q|to_k|to_v|to_out)(\.0)?\.lora_([AB])\.weight", key)
        old[f"{m[1]}.processor.{m[2]}_lora.{'down' if m[4] == 'A' else 'up'}.weight"] = value
    torch.save(old, tmp_path / "pytorch_lora_weights.bin")
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path)
    reference = with_diffusers_format(folder, {f"unet.{k}": v for k, v in sd.items()}, tmp_path)
    assert close(run(pipe.unet)[0], run(reference.unet)[0], 1e-6)


# ---- keyless .pt lists: cloneofsimo's lora as Text-To-Video-Finetuning and T2V-Turbo save them


def cloneofsimo_modules(model, targets, skip_classes=()):
    """The tool's ``_find_modules_v2`` search: for each module whose class name is a target, the Linear /
    Conv2d / Conv3d modules under it (exact classes: its injection skips subclasses), each once."""
    found = {}
    for ancestor in model.modules():
        if type(ancestor).__name__ in targets:
            for name, module in ancestor.named_modules():
                if type(module) in (nn.Linear, nn.Conv2d, nn.Conv3d) and not isinstance(module, skip_classes):
                    found.setdefault(id(module), module)
    names = {id(m): n for n, m in model.named_modules()}
    return [(names[i], m) for i, m in found.items()]


def keyless_file(model, targets, seed, skip_classes=()):
    """``save_lora_weight``'s list [up, down, ...] for random factors of LoraInjected* shapes, and the same
    factors as a diffusers state dict (peft layout) with diffusers' names."""
    g = torch.Generator().manual_seed(seed)
    r = 2
    tensors, state_dict = [], {}
    for name, module in cloneofsimo_modules(model, targets, skip_classes):
        if isinstance(module, nn.Linear):
            down, up = torch.randn(r, module.in_features, generator=g), torch.randn(module.out_features, r, generator=g)
        else:
            k = module.weight.shape[2:]
            down = torch.randn(r, module.in_channels, *k, generator=g) / 4
            up = torch.randn(module.out_channels, r, *[1] * len(k), generator=g)
        up = up * 0.05
        tensors += [up, down]
        state_dict[f"{name}.lora_A.weight"], state_dict[f"{name}.lora_B.weight"] = down, up
    return tensors, state_dict


@pytest.mark.parametrize("targets", [{"UNet3DConditionModel"}, {"CrossAttention", "Attention", "GEGLU"},
                                     {"TemporalConvLayer", "TransformerTemporalModel"}])
def test_keyless_unet_list(folder, tmp_path, targets):
    tensors, sd = keyless_file(diffusers_unet(folder), targets, seed=5)
    torch.save(tensors, tmp_path / "unet_lora.pt")  # T2V-Turbo's name
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path / "unet_lora.pt")
    reference = with_diffusers_format(folder, {f"unet.{k}": v for k, v in sd.items()}, tmp_path)
    ours, ref = run(pipe.unet)[0], run(reference.unet)[0]
    assert close(ours, ref, 1e-6) and not close(ours, run(fresh(folder).unet)[0], 1e-3)


def test_keyless_lists_of_diffusers_before_its_peft_backend(folder, tmp_path):
    """diffusers 0.19-0.25 without peft built most layers as LoRACompatibleLinear / Conv, which the tool
    skipped: the list holds the plain layers only."""
    class LoRACompatibleLinear(nn.Linear):
        pass

    class LoRACompatibleConv(nn.Conv2d):
        pass
    unet = diffusers_unet(folder)
    plain = re.compile(r"conv_in|conv_out|.*temp_convs\.\d+\.conv\d\.\d|(transformer_in|.*temp_attentions\.\d+)\.proj_(in|out)")
    for name, module in unet.named_modules():
        if not plain.fullmatch(name) and type(module) in (nn.Linear, nn.Conv2d):
            module.__class__ = LoRACompatibleLinear if isinstance(module, nn.Linear) else LoRACompatibleConv
    tensors, sd = keyless_file(unet, {"UNet3DConditionModel"}, seed=6)
    torch.save(tensors, tmp_path / "unet.pt")
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path / "unet.pt")
    reference = with_diffusers_format(folder, {f"unet.{k}": v for k, v in sd.items()}, tmp_path)
    assert close(run(pipe.unet)[0], run(reference.unet)[0], 1e-6)


def test_keyless_folder_of_unet_and_text_encoder_lists(folder, tmp_path):
    """Text-To-Video-Finetuning's ``lora/`` folder: ``<step>_unet.pt`` and ``<step>_text_encoder.pt``."""
    u_tensors, u_sd = keyless_file(diffusers_unet(folder), {"UNet3DConditionModel"}, seed=7)
    t_tensors, t_sd = keyless_file(transformers_text_encoder(folder), {"CLIPEncoderLayer"}, seed=8)
    os.makedirs(tmp_path / "lora")
    torch.save(u_tensors, tmp_path / "lora" / "500_unet.pt")
    torch.save(t_tensors, tmp_path / "lora" / "500_text_encoder.pt")
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path / "lora")
    reference = with_diffusers_format(folder, {**{f"unet.{k}": v for k, v in u_sd.items()},
                                               **{f"text_encoder.{k}": v for k, v in t_sd.items()}}, tmp_path)
    (u, t), (ru, rt) = run(pipe.unet, pipe.text_encoder), run(reference.unet, reference.text_encoder)
    assert close(u, ru, 1e-6) and close(t, rt, 1e-6)
    torch.save(u_tensors, tmp_path / "lora" / "1000_unet.pt")
    with pytest.raises(SettingError, match="weight_name naming the file.*several keyless lists.*1000_unet.pt"):
        fresh(folder).load_lora_weights(tmp_path / "lora")


def test_keyless_list_that_fits_no_target_choice(folder, tmp_path):
    tensors, _ = keyless_file(diffusers_unet(folder), {"UNet3DConditionModel"}, seed=9)
    torch.save(tensors[:-2], tmp_path / "unet.pt")
    with pytest.raises(SettingError, match=r"lora: .*unet.pt: \d+ unet layer pairs that match no choice"):
        fresh(folder).load_lora_weights(tmp_path / "unet.pt")
    torch.save(tensors[:3], tmp_path / "odd.pt")
    with pytest.raises(SettingError, match="a list of 3 item"):
        fresh(folder).load_lora_weights(tmp_path / "odd.pt")


# ---- stable_lora: Text-To-Video-Finetuning's loralib factors, webui file under the original names

FOUR_LEVEL_UNET = dict(TINY_UNET, block_out_channels=(8, 8, 8, 8), norm_num_groups=4, attention_head_dim=2,
                       layers_per_block=2, down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                       up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3)


def tool_unet_to_original(state_dict):
    """The tool's ``convert_unet_state_dict(strict_mapping=True)`` (its tables are for 4 levels of 2 blocks)."""
    top = [("time_embed.0.weight", "time_embedding.linear_1.weight"), ("input_blocks.0.0.weight", "conv_in.weight")]
    resnet = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"),
              ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]
    layer = [("input_blocks.0.1", "transformer_in")]
    for i in range(4):
        for j in range(2):
            layer.append((f"input_blocks.{3 * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if i < 3:
                layer.append((f"input_blocks.{3 * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
            layer.append((f"input_blocks.{3 * i + j + 1}.0.temopral_conv.", f"down_blocks.{i}.temp_convs.{j}."))
            if i < 3:
                layer.append((f"input_blocks.{3 * i + j + 1}.2.", f"down_blocks.{i}.temp_attentions.{j}."))
        for j in range(3):
            layer.append((f"output_blocks.{3 * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if i > 0:
                layer.append((f"output_blocks.{3 * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
            layer.append((f"output_blocks.{3 * i + j}.0.temopral_conv.", f"up_blocks.{i}.temp_convs.{j}."))
            if i > 0:
                layer.append((f"output_blocks.{3 * i + j}.2.", f"up_blocks.{i}.temp_attentions.{j}."))
        if i < 3:
            layer.append((f"input_blocks.{3 * (i + 1)}.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            layer.append((f"output_blocks.{3 * i + 2}.{1 if i == 0 else 3}.", f"up_blocks.{i}.upsamplers.0."))
    layer += [("middle_block.1.", "mid_block.attentions.0."), ("middle_block.2.", "mid_block.temp_attentions.0.")]
    for j in range(2):
        layer += [(f"middle_block.{3 * j}.", f"mid_block.resnets.{j}."),
                  (f"middle_block.{3 * j}.temopral_conv.", f"mid_block.temp_convs.{j}.")]
    mapping = {k: k for k in state_dict}
    for sd_name, hf_name in top:
        if hf_name in mapping:
            mapping[hf_name] = sd_name
    for k, v in mapping.items():
        if "resnets" in k:
            for sd_part, hf_part in resnet:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v
    for k, v in mapping.items():
        for sd_part, hf_part in layer:
            v = v.replace(hf_part, sd_part)
        mapping[k] = v
    return {v: state_dict[k].unsqueeze(-1) if "proj_" in k and "bias" not in k else state_dict[k]
            for k, v in mapping.items()}


def tool_text_to_original(state_dict):
    """The tool's ``convert_text_enc_state_dict_v20`` on LoRA keys (none end in ``q_proj.weight``)."""
    table = [("resblocks.", "text_model.encoder.layers."), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
             (".c_fc.", ".fc1."), (".c_proj.", ".fc2."), (".attn", ".self_attn"),
             ("ln_final.", "transformer.text_model.final_layer_norm."),
             ("token_embedding.weight", "transformer.text_model.embeddings.token_embedding.weight"),
             ("positional_embedding", "transformer.text_model.embeddings.position_embedding.weight")]
    protected = {re.escape(x[1]): x[0] for x in table}
    pattern = re.compile("|".join(protected.keys()))
    return {pattern.sub(lambda m: protected[re.escape(m.group(0))], k): v for k, v in state_dict.items()}


def loralib_factors(model, ancestors, seed, r=2):
    """stable_lora's ``add_lora_to`` factors for the Linear / Conv2d / Conv3d / Embedding layers under
    ``ancestors`` (class names), in loralib's shapes; and the model with them merged as loralib computes."""
    g = torch.Generator().manual_seed(seed)
    factors = {}
    roots = tuple(f"{a}." for a, m in model.named_modules() if type(m).__name__ in ancestors)
    for name, module in model.named_modules():
        if not name.startswith(roots) or type(module) not in (nn.Linear, nn.Conv2d, nn.Conv3d, nn.Embedding):
            continue
        w = module.weight
        if isinstance(module, nn.Linear):
            a, b = torch.randn(r, w.shape[1], generator=g), torch.randn(w.shape[0], r, generator=g)
        elif isinstance(module, nn.Embedding):
            a, b = torch.randn(r, w.shape[0], generator=g), torch.randn(w.shape[1], r, generator=g)
        else:
            k = module.kernel_size[0]
            a, b = torch.randn(r * k, w.shape[1] * k, generator=g), torch.randn(w.shape[0] * k, r * k, generator=g)
        a, b = a.half().float(), (b * 0.05).half().float()  # the webui file is fp16
        factors[f"{name}.lora_A"], factors[f"{name}.lora_B"] = a, b
        with torch.no_grad():
            if isinstance(module, nn.Embedding):
                w += (b @ a).T
            elif isinstance(module, nn.Conv3d):
                i, o, k = w.shape[:3]
                w += torch.mean((b @ a).view(i, o, k, module.kernel_size[0], 1), dim=-2, keepdim=True)
            else:
                w += (b @ a).view(w.shape)
    return factors


def test_stable_lora_webui_and_full_weights(tmp_path_factory, models_one_thread):
    folder = make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("four-level")), unet=FOUR_LEVEL_UNET)
    unet, text = diffusers_unet(folder), transformers_text_encoder(folder)
    unet_factors = loralib_factors(unet, {"Transformer2DModel", "TransformerTemporalModel", "TemporalConvLayer",
                                          "ResnetBlock2D"}, seed=11)
    text_factors = loralib_factors(text, {"CLIPAttention", "CLIPTextEmbeddings"}, seed=12)
    assert any(".temp_convs." in k for k in unet_factors) and any("token_embedding" in k for k in text_factors)
    # the tool ran on transformers 4, whose CLIPTextModel keys start with text_model.
    webui = {**tool_unet_to_original(unet_factors),
             **tool_text_to_original({f"text_model.{k}": v for k, v in text_factors.items()})}
    assert any(k.startswith("resblocks.0.attn.") for k in webui)
    assert any(k.startswith("input_blocks.1.0.temopral_conv.") for k in webui)
    out = tmp_path_factory.mktemp("stable-lora")
    save_file({k: v.half() for k, v in webui.items()}, out / "webui_500_lora_text_to_video.safetensors",
              metadata={"stable_lora_text_to_video": "v1", "lora_name": "lora_text_to_video_1a2b3"})
    save_file(unet_factors, out / "500_lora_text_to_video_unet.safetensors")  # full_weights: diffusers' names
    reference = run(unet, text)
    for name in ("webui_500_lora_text_to_video.safetensors", "500_lora_text_to_video_unet.safetensors"):
        pipe = fresh(folder)
        pipe.load_lora_weights(out, weight_name=name)
        ours = run(pipe.unet, pipe.text_encoder)
        assert close(ours[0], reference[0], 1e-5), name
        if name.startswith("webui"):
            assert close(ours[1], reference[1], 1e-5)


def test_t2v_turbo_file_on_a_guidance_distilled_unet(tmp_path_factory, tmp_path, models_one_thread):
    """T2V-Turbo's layout: a UNet whose guidance projection (time_cond_proj_dim) is set, and ``unet_lora.pt``
    a keyless list over every linear and convolution of the whole UNet in module order, the projection
    included; the pipeline then samples with LCMScheduler, one UNet call per step."""
    from diffusers import LCMScheduler as RefLCM
    folder = make_diffusers_pipeline_folder(str(tmp_path_factory.mktemp("turbo")),
                                            unet=dict(TINY_UNET, time_cond_proj_dim=8))
    RefLCM().save_pretrained(f"{folder}/scheduler")
    index = json.loads(open(f"{folder}/model_index.json").read())
    with open(f"{folder}/model_index.json", "w") as f:
        json.dump({**index, "scheduler": ["diffusers", "LCMScheduler"]}, f)
    tensors, sd = keyless_file(diffusers_unet(folder), {"UNet3DConditionModel"}, seed=8)
    assert "time_embedding.cond_proj.lora_A.weight" in sd  # the guidance projection takes an adapter too
    torch.save(tensors, tmp_path / "unet_lora.pt")
    pipe = fresh(folder)
    pipe.load_lora_weights(tmp_path / "unet_lora.pt")
    reference = with_diffusers_format(folder, {f"unet.{k}": v for k, v in sd.items()}, tmp_path)
    x, t, ctx = unet_inputs()
    cond = torch.randn(1, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = pipe.unet(x, t, ctx, timestep_cond=cond).sample
        assert close(ours, reference.unet(x, t, ctx, timestep_cond=cond).sample, 1e-6)
        assert not close(ours, fresh(folder).unet(x, t, ctx, timestep_cond=cond).sample, 1e-3)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    frames = pipe("a red circle", num_inference_steps=4, num_frames=3, height=16, width=16,
                  generator=torch.Generator().manual_seed(0)).frames
    assert calls == [1] * 4 and np_isfinite(frames)


def np_isfinite(frames) -> bool:
    import numpy as np
    return bool(np.isfinite(np.asarray(frames)).all())

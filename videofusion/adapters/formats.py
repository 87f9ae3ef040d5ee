"""LoRA files as the tools that make them write them, read into one form: component ("unet",
"text_encoder") -> layer name (our, i.e. diffusers', module names) -> :class:`~videofusion.adapters.lora.LoraPair`.

Detected from the file itself:

- diffusers / PEFT state dicts: ``[unet.|text_encoder.|base_model.model.]<layer>.lora_A[.<name>].weight`` and
  ``lora_B``, alphas from ``<layer>.alpha`` keys, the safetensors metadata diffusers writes, or a PEFT
  ``adapter_config.json`` beside the weights (``lora_alpha``, ``r``, ``rank_pattern``, ``alpha_pattern``);
- diffusers' older attention-processor keys: ``<block>.processor.to_q_lora.down.weight`` / ``.up.weight``
  and ``<layer>.lora.down.weight`` / ``.lora.up.weight``;
- PEFT adapter folders (``adapter_config.json`` + ``adapter_model.safetensors`` or ``.bin``);
- stable_lora safetensors (Text-To-Video-Finetuning, sd-webui-text2video): loralib's ``<layer>.lora_A`` /
  ``.lora_B`` under the original ModelScope names (or diffusers' names in its ``full_weights`` files),
  metadata ``stable_lora_text_to_video``;
- keyless ``.pt`` lists ``[up, down, up, down, ...]`` (cloneofsimo's lora as Text-To-Video-Finetuning and
  T2V-Turbo save it): layer names come from the model (:mod:`.keyless`), so they are read as
  :class:`KeylessLora`.

Files are read with safetensors or ``torch.load(weights_only=True)``: nothing in them runs.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from ..errors import SettingError
from ..io.files import read_tensors
from ..io.saving import atomic_write
from .keyless import KeylessLora
from .lora import LoraPair

COMPONENTS = ("unet", "text_encoder")
WEIGHT_NAMES = ("pytorch_lora_weights.safetensors", "adapter_model.safetensors", "pytorch_lora_weights.bin",
                "adapter_model.bin")
_PEFT = re.compile(r"(?P<layer>.+)\.lora_(?P<which>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")
_PROCESSOR = re.compile(r"(?P<block>.+)\.processor\.(?P<proj>to_q|to_k|to_v|to_out)_lora\.(?P<which>down|up)\.weight")
_COMPAT = re.compile(r"(?P<layer>.+)\.lora(?:_linear_layer)?\.(?P<which>down|up)\.weight")
_LORALIB = re.compile(r"(?P<layer>.+)\.lora_(?P<which>[AB])")

Lora = dict[str, dict[str, LoraPair]]  # component -> layer -> pair
# unprefixed keys of a text model (transformers 4, transformers 5, OpenCLIP): no UNet key starts so
TEXT_PREFIXES = ("text_model.", "encoder.layers.", "embeddings.", "resblocks.")


def lora_file(path: str | os.PathLike, weight_name: str | None = None) -> Path:
    """The weights file of ``path``: the file itself, or in a folder ``weight_name``, the first of
    :data:`WEIGHT_NAMES` there, or its only weights file. FileNotFoundError naming what was looked for."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"lora: no file or folder {str(path)!r}")
    for name in [weight_name] if weight_name else WEIGHT_NAMES:
        if (path / name).is_file():
            return path / name
    files = _weight_files(path)
    if not weight_name and len(files) == 1:
        return files[0]
    wanted = [weight_name] if weight_name else list(WEIGHT_NAMES) + ["a single weights file"]
    raise FileNotFoundError(f"lora: {path} has none of {wanted}; it holds {sorted(p.name for p in path.iterdir())}"
                            + ("; pass weight_name to choose one" if len(files) > 1 else ""))


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pth"))


def read_lora(path: str | os.PathLike, weight_name: str | None = None) -> Lora | KeylessLora:
    """The LoRA at ``path`` (a file or a folder; see the module docstring) in the one form, or the lists of
    a keyless file (a folder of ``*unet*.pt`` and ``*text_encoder*.pt`` lists, as Text-To-Video-Finetuning
    saves them, is read as one LoRA)."""
    path = Path(path)
    if path.is_dir() and not weight_name and not any((path / n).is_file() for n in WEIGHT_NAMES):
        keyless = _keyless_folder(path)
        if keyless is not None:
            return keyless
    file = lora_file(path, weight_name)
    saved = read_tensors(file)
    if isinstance(saved, list):
        return KeylessLora({_keyless_component(file): saved}, str(file))
    config_file = file.parent / "adapter_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return parse_state_dict(saved, config=config, metadata=_metadata(file), source=str(file))


def _keyless_component(file: Path) -> str:
    return "text_encoder" if "text_encoder" in file.name else "unet"


def _keyless_folder(folder: Path) -> KeylessLora | None:
    """A folder's ``*unet*.pt`` / ``*text_encoder*.pt`` pair (one of each at most), or None."""
    found: dict[str, list[Path]] = {}
    for file in _weight_files(folder):
        if file.suffix in (".pt", ".pth"):
            found.setdefault(_keyless_component(file), []).append(file)
    if not found:
        return None
    several = {c: [f.name for f in files] for c, files in found.items() if len(files) > 1}
    if several:
        raise SettingError("lora", f"{folder}: several keyless lists {several}",
                           "a folder with one list per component, or weight_name naming the file")
    lists = {}
    for component, (file,) in found.items():
        saved = read_tensors(file)
        if not isinstance(saved, list):
            return None
        lists[component] = saved
    return KeylessLora(lists, str(folder))


def _metadata(file: Path) -> dict[str, str]:
    if file.suffix != ".safetensors":
        return {}
    from safetensors import safe_open
    with safe_open(str(file), framework="pt") as f:
        return f.metadata() or {}


def parse_state_dict(state_dict: Mapping[str, torch.Tensor], config: dict | None = None,
                     metadata: Mapping[str, str] | None = None, source: str = "the LoRA") -> Lora:
    """A diffusers / PEFT / older diffusers LoRA state dict in the one form (see the module docstring)."""
    downs: dict[tuple[str, str], torch.Tensor] = {}
    ups: dict[tuple[str, str], torch.Tensor] = {}
    alphas: dict[tuple[str, str], float] = {}
    layouts: dict[tuple[str, str], str] = {}
    unknown = []
    for key, tensor in state_dict.items():
        component, rest = _component(key)
        if rest.endswith(".alpha"):
            alphas[(component, rest[:-len(".alpha")])] = float(tensor)
            continue
        if m := _PEFT.fullmatch(rest):
            layer, which = m["layer"], {"A": "down", "B": "up"}[m["which"]]
        elif m := _PROCESSOR.fullmatch(rest):
            layer, which = f"{m['block']}.{m['proj']}" + (".0" if m["proj"] == "to_out" else ""), m["which"]
        elif m := _COMPAT.fullmatch(rest):
            layer, which = m["layer"], m["which"]
        elif m := _LORALIB.fullmatch(rest):
            layer, which = m["layer"], {"A": "down", "B": "up"}[m["which"]]
            layouts[(component, layer)] = "loralib"
        else:
            unknown.append(key)
            continue
        (downs if which == "down" else ups)[(component, layer)] = tensor
    if unknown:
        raise SettingError("lora", f"{len(unknown)} key(s) of no known LoRA format in {source}: {unknown[:3]}",
                           "diffusers, PEFT, stable_lora or keyless .pt LoRA weights")
    unpaired = sorted(set(downs) ^ set(ups))
    if unpaired:
        raise SettingError("lora", f"{source}: layers with only one of lora_A / lora_B: {unpaired[:3]}",
                           "a down and an up weight for every layer")
    if not downs:
        raise SettingError("lora", f"{source}: no LoRA weights", "a file with lora_A / lora_B weights")
    out: Lora = {}
    for (component, layer), down in downs.items():
        alpha = alphas.get((component, layer), _config_alpha(config, metadata, component, layer, down.shape[0]))
        layout = layouts.get((component, layer), "peft")
        out.setdefault(component, {})[layer] = LoraPair(down, ups[(component, layer)], alpha, layout)
    return out


def _component(key: str) -> tuple[str, str]:
    """``unet.x`` / ``text_encoder.x`` / ``x``, each optionally with PEFT's ``base_model.model.`` -> (component,
    x); unprefixed keys are the UNet's unless they are a text model's (:data:`TEXT_PREFIXES`)."""
    component = next((c for c in COMPONENTS if key.startswith(c + ".")), None)
    if component is not None:
        key = key[len(component) + 1:]
    key = key.removeprefix("base_model.model.")
    if component is None:
        component = "text_encoder" if key.startswith(TEXT_PREFIXES) else "unet"
    return component, key


def _config_alpha(config: dict | None, metadata: Mapping[str, str] | None, component: str, layer: str,
                  rank: int) -> float | None:
    """A layer's alpha from a PEFT config (``alpha_pattern`` over ``lora_alpha``; None when alpha equals the
    rank) or from diffusers' ``lora_adapter_metadata`` in the safetensors header."""
    if config is None and metadata and "lora_adapter_metadata" in metadata:  # diffusers: {"unet.lora_alpha": ...}
        packed = json.loads(metadata["lora_adapter_metadata"])
        config = {k[len(component) + 1:]: v for k, v in packed.items() if k.startswith(component + ".")}
    if not config:
        return None
    pattern = {k: v for k, v in (config.get("alpha_pattern") or {}).items() if re.match(rf"(.*\.)?({k})$", layer)}
    alpha = next(iter(pattern.values()), config.get("lora_alpha"))
    return None if alpha is None else float(alpha)


def write_lora(path: str | os.PathLike, updates: dict[str, dict], rank: int, alpha: float,
               targets: dict[str, list[str]]) -> None:
    """Save adapters as diffusers does (``save_lora_weights``): ``updates`` component -> layer ->
    :class:`~videofusion.adapters.lora.Update` as ``<component>.<layer>.lora_A.weight`` / ``lora_B.weight``
    (float32) in a safetensors file with diffusers' ``lora_adapter_metadata`` (rank, alpha and target modules
    per component), written atomically."""
    from safetensors.torch import save_file
    tensors = {}
    for component, layers in updates.items():
        for layer, update in layers.items():
            tensors[f"{component}.{layer}.lora_A.weight"] = update.down.detach().float().contiguous().cpu()
            tensors[f"{component}.{layer}.lora_B.weight"] = update.up.detach().float().contiguous().cpu()
    packed = {f"{component}.{key}": value for component in updates
              for key, value in {"r": rank, "lora_alpha": alpha, "target_modules": targets[component]}.items()}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))

"""LoRA adapters on a model's linear, convolution and embedding layers (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models"), as PEFT applies them: a layer ``y = W x + b`` computes
``y + s * B(A(x))`` with a down-projection ``A`` (rank r) and an up-projection ``B``,
``s = weight * scale * alpha / r``.

A :class:`LoraPair` is a file's factors as read (see :mod:`.formats`); :func:`fit_pair` turns it into the
layer's update: factors in PEFT's shapes (``A`` with the layer's kernel, stride, padding and dilation, ``B``
1x1 for convolutions), or a dense weight update for layouts whose factors are not a layer-shaped pair
(loralib's convolutions and embeddings). The adapters live beside the model, not inside it: each adapted
layer gets one forward hook, the model's own modules and state dict are untouched (``save_pretrained``
still writes the base weights), and several named adapters can be loaded at once, weighted, switched,
fused into the base weights (``fuse``) and taken out again exactly (``unfuse`` restores the saved base
weights bit for bit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SettingError

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)
_CONV = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}
LAYOUTS = ("peft", "loralib")


@dataclass
class LoraPair:
    """One layer's update as a file holds it: ``down`` A and ``up`` B, ``alpha`` (None: alpha = rank, a
    scaling of 1), and the ``layout`` of the factors: ``"peft"`` (A (r, in[, *kernel]), B (out, r[, 1, ...]),
    also diffusers' and cloneofsimo's) or ``"loralib"`` (Microsoft's loralib, used by stable_lora: for a
    convolution with kernel k, A (r*k, in*k) and B (out*k, r*k) whose product is reshaped to the weight;
    for an embedding, A (r, num_embeddings) and B (dim, r))."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None
    layout: str = "peft"

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scaling(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass
class Update:
    """A layer's update fitted to it: ``down``/``up`` factors in the layer's shapes, or ``dense``, a tensor
    of the layer's weight shape; ``scaling`` already folds alpha / r."""

    down: torch.Tensor | None
    up: torch.Tensor | None
    dense: torch.Tensor | None
    scaling: float

    def delta_weight(self) -> torch.Tensor:
        """The update in the layer's weight shape: (out, in), (out, in, *kernel) or (num_embeddings, dim)."""
        if self.dense is not None:
            return self.dense * self.scaling
        up, down = self.up.flatten(1).float(), self.down.flatten(1).float()  # (out, r), (r, in * k)
        return (up @ down).reshape(self.up.shape[0], *self.down.shape[1:]) * self.scaling


def fit_pair(name: str, layer: nn.Module, pair: LoraPair) -> Update | str:
    """``pair`` as ``layer``'s :class:`Update`, or why it does not fit (a phrase). A 1x1 convolution's factors
    fit a linear layer (diffusers' 1x1 ``proj_in`` is a linear layer here)."""
    if not isinstance(layer, ADAPTABLE):
        return f"{name} is a {type(layer).__name__}, not a linear, convolution or embedding layer"
    weight = layer.weight
    down, up = pair.down, pair.up
    if pair.layout == "loralib" and isinstance(layer, nn.Embedding):
        if down.ndim == 2 and up.ndim == 2 and down.shape[1] == weight.shape[0] and up.shape[0] == weight.shape[1] \
                and up.shape[1] == down.shape[0]:
            return Update(None, None, (up.float() @ down.float()).T, pair.scaling)  # (num_embeddings, dim)
        return _mismatch(name, pair, weight)
    k = weight.shape[2] if weight.ndim > 2 else 1
    if pair.layout == "loralib" and isinstance(layer, (nn.Conv2d, nn.Conv3d)) and weight.shape[2:].numel() > 1:
        out, inp = weight.shape[:2]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0] or up.shape[0] != out * k \
                or down.shape[1] != inp * k:
            return _mismatch(name, pair, weight, f" (expected loralib factors (r*{k}, {inp * k}) / ({out * k}, r*{k}))")
        product = up.float() @ down.float()  # (out*k, in*k), in float32 whatever the file's dtype
        if weight.ndim == 4:
            dense = product.reshape(weight.shape)  # (out, in, k, k)
        else:  # loralib's temporal (k, 1, 1) kernel: (out, in, k, k, 1) averaged over its fourth axis
            dense = product.reshape(out, inp, k, k, 1).mean(dim=-2, keepdim=True)  # (out, in, k, 1, 1)
        return Update(None, None, dense, pair.scaling)
    if isinstance(layer, nn.Embedding):
        return f"{name}: an embedding layer takes loralib factors only"
    rank = down.shape[0]
    if isinstance(layer, nn.Linear) and down.shape[2:].numel() == 1 and up.shape[2:].numel() == 1:
        down, up = down.flatten(1), up.flatten(1)  # a 1x1 convolution's factors on a linear layer
    elif weight.ndim > 2 and weight.shape[2:].numel() == 1 and down.ndim == 2 and up.ndim == 2:
        down = down.reshape(*down.shape, *weight.shape[2:])  # linear factors on a 1x1 convolution
        up = up.reshape(*up.shape, *weight.shape[2:])
    want_down = (rank, *weight.shape[1:])
    want_up = (weight.shape[0], rank, *([1] * (weight.ndim - 2)))
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        return _mismatch(name, pair, weight, f" (expected {want_down} / {want_up})")
    return Update(down, up, None, pair.scaling)


def _mismatch(name: str, pair: LoraPair, weight: torch.Tensor, expected: str = "") -> str:
    return (f"{name}: down {tuple(pair.down.shape)} / up {tuple(pair.up.shape)} do not fit a layer of weight "
            f"{tuple(weight.shape)}{expected}")


def update_output(layer: nn.Module, update: Update, x: torch.Tensor) -> torch.Tensor:
    """``scaling * B(A(x))`` (or the dense update applied to ``x``) for ``layer``'s input ``x``. The update's
    tensors move to ``x``'s device once (and stay: a pipeline moved to a GPU copies them there once)."""
    if (update.dense if update.dense is not None else update.down).device != x.device:
        update.down, update.up, update.dense = (None if t is None else t.to(x.device)
                                                for t in (update.down, update.up, update.dense))
    if isinstance(layer, nn.Embedding):  # x: token ids
        return F.embedding(x, update.dense.to(layer.weight.dtype)) * update.scaling
    if update.dense is not None:
        dense = update.dense.to(x.device, x.dtype)
        return _CONV[type(layer)](x, dense, stride=layer.stride, padding=layer.padding,
                                  dilation=layer.dilation, groups=layer.groups) * update.scaling
    down, up = update.down.to(x.device, x.dtype), update.up.to(x.device, x.dtype)
    if isinstance(layer, nn.Linear):
        return F.linear(F.linear(x, down), up) * update.scaling
    conv = _CONV[type(layer)]
    hidden = conv(x, down, stride=layer.stride, padding=layer.padding, dilation=layer.dilation)
    return conv(hidden, up) * update.scaling


def target_layers(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """The linear and convolution layers of ``model`` named ``target`` or ``....target`` for a target in
    ``targets`` (PEFT's ``target_modules`` rule), in module order; SettingError when there are none."""
    found = [name for name, module in model.named_modules() if isinstance(module, ADAPTABLE[:4])
             and any(name == t or name.endswith("." + t) for t in targets)]
    if not found:
        raise SettingError("lora_target_modules", list(targets),
                           f"names (or name endings) of linear or convolution layers of {type(model).__name__}, "
                           "e.g. to_q, to_k, to_v, to_out.0")
    return found


def trainable_updates(model: nn.Module, layers: list[str], rank: int, alpha: float,
                      generator: torch.Generator) -> dict[str, Update]:
    """New trainable factors for ``layers`` of ``model`` as PEFT initialises them: ``A`` Kaiming-uniform
    (``a = sqrt(5)``, drawn from ``generator`` in layer order), ``B`` zero, so the model starts unchanged;
    float32 parameters on each layer's device, scaling ``alpha / rank``."""
    modules = dict(model.named_modules())
    updates = {}
    for name in layers:
        weight = modules[name].weight
        down = torch.empty(rank, *weight.shape[1:])  # (r, in[, *kernel])
        bound = 1.0 / math.sqrt(down[0].numel())  # kaiming_uniform_ with a = sqrt(5): gain sqrt(1/3)
        down.uniform_(-bound, bound, generator=generator)
        up = torch.zeros(weight.shape[0], rank, *[1] * (weight.ndim - 2))  # (out, r[, 1, ...])
        updates[name] = Update(nn.Parameter(down.to(weight.device)), nn.Parameter(up.to(weight.device)), None,
                               alpha / rank)
    return updates


@dataclass
class Adapters:
    """The LoRA adapters of one model (see the module docstring).

    ``adapters``: adapter name -> {layer name -> :class:`Update`}; ``active``: adapter name -> weight, in
    order; ``call_scale``: a multiplier for the current call (diffusers' ``cross_attention_kwargs["scale"]``).
    """

    model: nn.Module
    adapters: dict[str, dict[str, Update]] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)
    call_scale: float = 1.0
    fused: dict[str, torch.Tensor] = field(default_factory=dict)  # layer name -> its weight before fusing
    fused_adapters: dict[str, float] = field(default_factory=dict)
    enabled: bool = True
    _hooks: dict[str, object] = field(default_factory=dict)

    def fit(self, adapter: str, pairs: dict[str, LoraPair]) -> dict[str, Update]:
        """``pairs`` fitted to the model's layers; SettingError naming the first few layers that are not in
        the model or do not fit."""
        if adapter in self.adapters:
            raise SettingError("adapter_name", adapter, f"a name not in use (loaded: {sorted(self.adapters)})")
        layers = dict(self.model.named_modules())
        fitted = {name: fit_pair(name, layers[name], pair) if name in layers else f"{name}: no such layer"
                  for name, pair in pairs.items()}
        problems = [why for why in fitted.values() if isinstance(why, str)]
        if problems:
            raise SettingError("lora", f"{len(problems)} mismatched layer(s): {'; '.join(problems[:3])}",
                               f"layers of {type(self.model).__name__} with matching shapes")
        return fitted

    def add(self, adapter: str, updates: dict[str, Update]) -> None:
        """Load fitted ``updates`` (:meth:`fit`) as adapter ``adapter``, active with weight 1."""
        layers = dict(self.model.named_modules())
        self.adapters[adapter] = updates
        self.active[adapter] = 1.0
        for name in updates:
            if name not in self._hooks:
                self._hooks[name] = layers[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def add_lora(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            if not self.enabled:
                return output
            for adapter, weight in self.active.items():
                update = self.adapters[adapter].get(name)
                if update is not None and adapter not in self.fused_adapters and weight * self.call_scale != 0:
                    output = output + update_output(layer, update, inputs[0]) * (weight * self.call_scale)
            return output
        return add_lora

    def set_active(self, names: list[str], weights: list[float]) -> None:
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise SettingError("adapter_names", unknown, f"loaded adapters ({sorted(self.adapters)})")
        self.active = dict(zip(names, weights))

    def fuse(self, scale: float = 1.0) -> None:
        """Add the active adapters' updates into the base weights (saving the originals once)."""
        layers = dict(self.model.named_modules())
        with torch.no_grad():
            for adapter, weight in self.active.items():
                if adapter in self.fused_adapters:
                    continue
                for name, update in self.adapters[adapter].items():
                    w = layers[name].weight
                    self.fused.setdefault(name, w.detach().clone())
                    w += (update.delta_weight() * (weight * scale)).to(w.device, w.dtype)
                self.fused_adapters[adapter] = weight * scale

    def unfuse(self) -> None:
        """The base weights as they were before any fuse, exactly."""
        layers = dict(self.model.named_modules())
        with torch.no_grad():
            for name, original in self.fused.items():
                layers[name].weight.copy_(original)
        self.fused.clear()
        self.fused_adapters.clear()

    def delete(self, names: list[str]) -> None:
        if any(n in self.fused_adapters for n in names):
            raise SettingError("adapter_names", names, "adapters that are not fused (call unfuse_lora() first)")
        for name in names:
            self.adapters.pop(name, None)
            self.active.pop(name, None)
        still = {layer for updates in self.adapters.values() for layer in updates}
        for layer in [n for n in self._hooks if n not in still]:
            self._hooks.pop(layer).remove()

    def unload(self) -> None:
        """Every adapter out, fused ones too: the model exactly as it was loaded."""
        self.unfuse()
        self.delete(list(self.adapters))

"""LoRA adapters: read from the files the tools that make them write (:mod:`.formats`), applied to a pipeline's
UNet and text encoder (:mod:`.lora`), with diffusers' pipeline API (``load_lora_weights``, ``set_adapters``,
``fuse_lora``, ...: :class:`PipelineAdapters` does the work behind those methods)."""
from __future__ import annotations

import math
import numbers
import os

from torch import nn

from ..errors import SettingError
from ..io.hub import resolve_pretrained
from ..models.attention import projections_fused
from .formats import COMPONENTS, Lora, parse_state_dict, read_lora
from .keyless import KeylessLora, keyless_pairs
from .lora import Adapters, LoraPair, target_layers, trainable_updates
from .stable_lora import diffusers_layer, text_table, unet_table

__all__ = ["Adapters", "KeylessLora", "LoraPair", "PipelineAdapters", "load_lora", "parse_state_dict", "read_lora"]


class PipelineAdapters:
    """The adapters of a pipeline's components (``unet``, ``text_encoder``), named as diffusers names them
    (``default_0``, ``default_1``, ... unless a name is given). Each model holds its own
    :class:`Adapters` (``model.lora_adapters``), so pipelines that share a model share its adapters, as
    diffusers' do."""

    def __init__(self, pipe):
        self.pipe = pipe

    @property
    def per_model(self) -> dict[str, Adapters]:
        """Component -> the adapters of its model, for the components that have any."""
        found = {c: getattr(getattr(self.pipe, c, None), "lora_adapters", None) for c in COMPONENTS}
        return {c: a for c, a in found.items() if a is not None}

    def _model(self, component: str) -> nn.Module:
        model = getattr(self.pipe, component, None)
        if not isinstance(model, nn.Module):
            raise SettingError("lora", f"weights for the {component}", "components the pipeline has as models")
        return model

    def _adapters(self, component: str) -> Adapters:
        model = self._model(component)
        if getattr(model, "lora_adapters", None) is None:
            model.lora_adapters = Adapters(model)
        return model.lora_adapters

    def names(self) -> list[str]:
        """Every loaded adapter, in loading order."""
        return list(dict.fromkeys(n for a in self.per_model.values() for n in a.adapters))

    def load(self, lora: Lora | KeylessLora, adapter_name: str | None = None) -> str:
        """Add ``lora`` under ``adapter_name`` (default ``default_<n>``); returns the name. Layer names of the
        original release are renamed, keyless lists matched to layers, and every component's layers checked
        before any is changed."""
        if isinstance(lora, KeylessLora):
            lora = {component: keyless_pairs(self._model(component), component, tensors, lora.source)
                    for component, tensors in lora.lists.items()}
        unknown = sorted(set(lora) - set(COMPONENTS))
        if unknown:
            raise SettingError("lora", f"weights for {unknown}", f"weights for {', '.join(COMPONENTS)}")
        name = adapter_name or f"default_{len(self.names())}"
        if name in self.names():
            raise SettingError("adapter_name", name, f"a name not in use (loaded: {self.names()})")
        staged = []
        for component, pairs in lora.items():  # every component's checks first, then the changes
            adapters = self._adapters(component)
            table = unet_table(adapters.model) if component == "unet" else text_table(adapters.model)
            pairs = {diffusers_layer(layer, component, table): pair for layer, pair in pairs.items()}
            staged.append((adapters, adapters.fit(name, pairs)))
        for adapters, updates in staged:
            adapters.add(name, updates)
        return name

    def add_trainable(self, component: str, name: str, targets: list[str], rank: int, alpha: float,
                      generator) -> dict[str, LoraPair]:
        """New trainable adapter ``name`` on ``component``'s layers matching ``targets`` (:func:`.lora.target_layers`,
        initialised as PEFT does: the model starts unchanged); returns its updates (their ``down`` / ``up`` are
        the parameters to train)."""
        adapters = self._adapters(component)
        if name in adapters.adapters:
            raise SettingError("adapter_name", name, f"a name not in use on the {component} "
                               f"(loaded: {list(adapters.adapters)})")
        updates = trainable_updates(adapters.model, target_layers(adapters.model, targets), rank, alpha, generator)
        adapters.add(name, updates)
        return updates

    def set_active(self, names: str | list[str], weights: float | list[float] | None = None) -> None:
        """Make ``names`` the active adapters with ``weights`` (default 1 each; one number for all)."""
        names = [names] if isinstance(names, str) else list(names)
        weights = [1.0] * len(names) if weights is None else \
            [weights] * len(names) if isinstance(weights, numbers.Real) else list(weights)
        if len(weights) != len(names) or not all(isinstance(w, numbers.Real) and math.isfinite(w) for w in weights):
            raise SettingError("adapter_weights", weights, f"one finite number per adapter ({len(names)}), "
                               "or one for all")
        weights = [float(w) for w in weights]
        unknown = [n for n in names if n not in self.names()]
        if unknown:
            raise SettingError("adapter_names", unknown, f"loaded adapters ({self.names()})")
        for adapters in self.per_model.values():
            adapters.set_active([n for n in names if n in adapters.adapters],
                                [w for n, w in zip(names, weights) if n in adapters.adapters])

    def active(self) -> list[str]:
        return list(dict.fromkeys(n for a in self.per_model.values() for n in a.active))

    def by_component(self) -> dict[str, list[str]]:
        return {c: list(a.adapters) for c, a in self.per_model.items() if a.adapters}

    def fuse(self, components: list[str], lora_scale: float = 1.0, names: list[str] | None = None) -> None:
        """Fuse the active adapters (or ``names``, made active) of ``components`` into their weights."""
        if names is not None:
            self.set_active(names)
        for component in components:
            if component in self.per_model:
                self.per_model[component].fuse(lora_scale)
        self.refresh_fused_projections()

    def unfuse(self, components: list[str]) -> None:
        for component in components:
            if component in self.per_model:
                self.per_model[component].unfuse()
        self.refresh_fused_projections()

    def refresh_fused_projections(self) -> None:
        """Rebuild the fused q/k/v copies (``fuse_qkv_projections``, the fast path) of the models whose weights
        changed, so they follow fused adapters."""
        for model in (getattr(self.pipe, "unet", None), getattr(self.pipe, "text_encoder", None)):
            if isinstance(model, nn.Module) and projections_fused(model):
                model.fuse_qkv_projections()

    def check_unfused_reach(self) -> None:
        """ValueError when an unfused adapter changes q/k/v layers of a model whose attention runs on fused
        projections (the fused copy bypasses those layers); before any model runs."""
        for component, adapters in self.per_model.items():
            unfused = set(adapters.active) - set(adapters.fused_adapters)
            touched = any(layer.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
                          for name in unfused for layer in adapters.adapters[name])
            if touched and projections_fused(adapters.model):
                raise SettingError("lora", f"unfused adapters on the {component}'s q/k/v projections, which run "
                                   "fused (fuse_qkv_projections or the fast path)",
                                   "pipe.fuse_lora() first (the fused projections follow it), or "
                                   "unfuse_qkv_projections() / disable_fast_path()")

    def delete(self, names: str | list[str]) -> None:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self.names()]
        if unknown:
            raise SettingError("adapter_names", unknown, f"loaded adapters ({self.names()})")
        for adapters in self.per_model.values():
            adapters.delete(names)

    def unload(self) -> None:
        for component, adapters in self.per_model.items():
            adapters.unload()
            del self._model(component).lora_adapters
        self.refresh_fused_projections()

    def has_unfused(self) -> bool:
        """True while an adapter is applied by hooks (not fused into the weights)."""
        return any(set(a.active) - set(a.fused_adapters) for a in self.per_model.values())

    def set_call_scale(self, scale: float) -> None:
        """Every unfused adapter at ``scale`` times its weight (a call's ``cross_attention_kwargs={"scale": s}``;
        the pipeline sets it when a call starts and back to 1 when it ends)."""
        for adapters in self.per_model.values():
            adapters.call_scale = scale


def load_lora(path: str | os.PathLike, weight_name: str | None = None, **hub_kwargs) -> Lora | KeylessLora:
    """The LoRA of a file, a folder or a Hub id (only its weights and adapter config are fetched)."""
    if not os.path.exists(path):
        patterns = [weight_name] if weight_name else ["*.safetensors", "*.bin", "*.pt", "adapter_config.json"]
        try:
            path = resolve_pretrained(str(path), allow_patterns=patterns, **hub_kwargs)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"lora: no file or folder {str(path)!r}, nor a Hub id of that name ({e})") from e
    return read_lora(path, weight_name)

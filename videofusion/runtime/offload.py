"""CPU offload: keep the weights in CPU memory and bring them to the accelerator only while used.

* :class:`ModelOffload` keeps one whole component (text encoder, UNet, VAE) on the accelerator at a
  time; the pipeline asks for each before it uses it. Costs one host-to-device copy per component
  per call; the UNet stays resident through the whole denoising loop.
* :class:`SequentialOffload` keeps every weight on the CPU and moves each module's own parameters to
  the accelerator just for its forward call: the lowest memory, the slowest.

Both are exact: they only move tensors.
"""
from __future__ import annotations

import torch
from torch import nn


class ModelOffload:
    """One component on ``device`` at a time; the others wait in CPU memory."""

    def __init__(self, device: torch.device):
        self.device = device
        self.active: nn.Module | None = None

    def load(self, module: nn.Module | None) -> None:
        """Bring ``module`` to the accelerator, sending the previous one back to the CPU."""
        if module is None or module is self.active:
            return
        self.release()
        module.to(self.device)
        self.active = module

    def release(self) -> None:
        """Send the component on the accelerator back to the CPU."""
        if self.active is not None:
            self.active.to("cpu")
            self.active = None


class SequentialOffload:
    """Moves each module's own weights to ``device`` for its forward call and back after it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.handles: list = []

    def attach(self, model: nn.Module) -> None:
        model.to("cpu")
        for module in model.modules():
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                self.handles.append(module.register_forward_pre_hook(self._onload))
                self.handles.append(module.register_forward_hook(self._offload))

    def _onload(self, module: nn.Module, args) -> None:
        module._apply(lambda t: t.to(self.device, non_blocking=True), recurse=False)

    def _offload(self, module: nn.Module, args, output) -> None:
        module._apply(lambda t: t.to("cpu"), recurse=False)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

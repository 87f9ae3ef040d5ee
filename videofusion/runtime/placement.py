"""Where a pipeline's models live between and during calls: one object per pipeline holds the offload
mode and the fast path, so the pipeline's ``enable_*`` methods are one line each.

Offload modes (at most one at a time, :attr:`Placement.offload`):

* ``None``: resident; the models stay where ``pipe.to(...)`` put them.
* :class:`~videofusion.runtime.offload.ModelOffload`: one whole model on the accelerator at a time;
  the pipeline asks for each (:meth:`Placement.onload`) before using it.
* :class:`~videofusion.runtime.offload.SequentialOffload` or
  :class:`~videofusion.runtime.streamed.StreamedOffload`: weights stay in CPU memory and forward hooks
  bring each layer (block) in; nothing to ask for.

The fast path (:class:`~videofusion.runtime.fast.FastPath`) changes the UNet in place, so it is never
combined with offload, which moves the UNet's weights.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .fast import FastPath
from .offload import ModelOffload, SequentialOffload
from .streamed import StreamedOffload

Offload = ModelOffload | SequentialOffload | StreamedOffload


class Placement:
    """The offload mode and fast path of one pipeline (see the module docstring)."""

    def __init__(self) -> None:
        self.offload: Offload | None = None
        self.fast: FastPath | None = None

    @property
    def offload_device(self) -> torch.device | None:
        """The accelerator offload computes on, or None when the models are resident."""
        return self.offload.device if self.offload is not None else None

    def set_offload(self, offload: Offload, models: Iterable[nn.Module], unet: nn.Module) -> None:
        """Switch to ``offload`` for ``models`` (any previous offload and the fast path are turned off)."""
        self.disable_offload()
        self.disable_fast_path(unet)  # offload moves weights under the compiled graph's feet
        for model in models:
            if isinstance(offload, ModelOffload):
                model.to("cpu")
            else:
                offload.attach(model)
        self.offload = offload

    def disable_offload(self) -> None:
        """Back to resident models, left on the CPU."""
        if isinstance(self.offload, ModelOffload):
            self.offload.release()
        elif self.offload is not None:
            self.offload.detach()
        self.offload = None

    def onload(self, model: nn.Module | None) -> None:
        """Before ``model`` runs: with model offload, bring it to the accelerator (the previous one leaves)."""
        if isinstance(self.offload, ModelOffload):
            self.offload.load(model)

    def end_call(self) -> None:
        """After a call: with model offload, the last model used goes back to the CPU."""
        if isinstance(self.offload, ModelOffload):
            self.offload.release()

    def enable_fast_path(self, unet: nn.Module, fast: FastPath) -> None:
        if self.offload is not None:
            raise ValueError("enable_fast_path: not combinable with CPU offload; call disable_cpu_offload() first")
        self.disable_fast_path(unet)
        self.fast = fast.apply(unet)

    def disable_fast_path(self, unet: nn.Module) -> None:
        """Back to the plain eager UNet."""
        if self.fast is not None:
            self.fast.remove(unet)
            self.fast = None

    def unet_forward(self, unet: nn.Module) -> Callable:
        """The UNet callable of a call: the fast path's when it is on, else the UNet itself."""
        return self.fast.forward(unet) if self.fast is not None else unet

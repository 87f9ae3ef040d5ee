"""The fast inference path: what runs the UNet denoising step as fast as the hardware allows,
without changing what it computes beyond floating-point rounding.

Each part can be switched on its own (bench/gpu.py measures each):

* ``fuse_qkv``: one matrix multiply for q, k, v of every self-attention (k, v of cross-attention)
  instead of three (two) narrower ones.
* ``channels_last``: the 2-D convolutions' weights in NHWC layout, which is what cuDNN's fastest
  fp16/bf16 kernels read; activations follow.
* ``compile``: ``torch.compile`` of the UNet's forward (Inductor fuses GroupNorm + SiLU, bias and
  residual epilogues, and picks attention kernels); ``mode`` is torch.compile's (``"default"``,
  ``"max-autotune-no-cudagraphs"``, ``"reduce-overhead"`` for CUDA graphs of the whole step).
  Compiled kernels are cached on disk (:func:`compile_cache_dir`), so a second process skips most of
  the warm-up.

:class:`FastPath` leaves the module's own ``forward`` and state dict alone: the compiled function is
kept beside it, so saving, training and offload see the plain model. The pipeline turns it on by
default when it runs on CUDA (``pipe.disable_fast_path()`` turns it off).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_cache_dir() -> Path:
    """Where compiled kernels are kept between processes: ``$VIDEOFUSION_COMPILE_CACHE``, else
    ``$XDG_CACHE_HOME/videofusion/inductor`` (``~/.cache/videofusion/inductor``)."""
    if os.environ.get("VIDEOFUSION_COMPILE_CACHE"):
        return Path(os.environ["VIDEOFUSION_COMPILE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "videofusion" / "inductor"


def use_compile_cache() -> Path:
    """Point Inductor's on-disk caches (FX graphs, autotuning, Triton kernels) at
    :func:`compile_cache_dir` unless ``TORCHINDUCTOR_CACHE_DIR`` is already set; returns the folder."""
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        folder = compile_cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    import torch._inductor.config as inductor_config
    inductor_config.fx_graph_cache = True
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def set_conv_layout(model: nn.Module, memory_format: torch.memory_format) -> None:
    """Store every 2-D convolution weight of ``model`` in ``memory_format`` (``torch.channels_last``
    or ``torch.contiguous_format``). Values are unchanged; only the strides move."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=memory_format)


@dataclass
class FastPath:
    """Settings of the fast path (see the module docstring); ``apply`` turns them on for a UNet."""

    fuse_qkv: bool = True
    channels_last: bool = True
    compile: bool = True
    mode: str = "max-autotune-no-cudagraphs"
    backend: str = "inductor"  # "aot_eager" checks the trace without code generation (tests)
    fullgraph: bool = False
    _compiled: Callable | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.mode not in COMPILE_MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {list(COMPILE_MODES)}")

    def apply(self, unet: nn.Module) -> "FastPath":
        """Fuse (``unet.fuse_qkv_projections()``) and re-layout ``unet`` in place and prepare the compiled forward (compiled lazily, on
        the first call, for the shapes it gets)."""
        if self.fuse_qkv:
            unet.fuse_qkv_projections()
        if self.channels_last:
            set_conv_layout(unet, torch.channels_last)
        if self.compile:
            if self.backend == "inductor":
                use_compile_cache()
            options = {} if self.backend != "inductor" else {"mode": self.mode}
            self._compiled = torch.compile(unet.forward, backend=self.backend, fullgraph=self.fullgraph,
                                           dynamic=False, **options)
        return self

    def remove(self, unet: nn.Module) -> None:
        """Undo :meth:`apply`: plain projections, contiguous weights, the eager forward."""
        unet.unfuse_qkv_projections()
        set_conv_layout(unet, torch.contiguous_format)
        self._compiled = None

    def forward(self, unet: nn.Module) -> Callable:
        """The function to call instead of ``unet(...)``."""
        return self._compiled if self._compiled is not None else unet

"""Multi-head attention (PyTorch's fused SDPA) shared by the UNet3D denoiser and the VAE, and the switches
that act on every attention layer of a model: slicing and fused projections. Attribute names are diffusers'
checkpoint keys (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``group_norm``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, slice_size: int | None = None) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` via ``F.scaled_dot_product_attention``.

    q (b, heads, n, d), k and v (b, heads, m, d) -> (b, heads, n, d). With ``slice_size`` the
    (batch * heads) rows are processed ``slice_size`` at a time (less peak memory, same result).
    """
    if slice_size is None:
        return F.scaled_dot_product_attention(q, k, v)
    b, heads, n, d = q.shape
    q, k, v = (t.reshape(b * heads, t.shape[2], d) for t in (q, k, v))  # (b*heads, seq, d)
    out = torch.cat([F.scaled_dot_product_attention(q[i:i + slice_size], k[i:i + slice_size], v[i:i + slice_size])
                     for i in range(0, b * heads, slice_size)])
    return out.reshape(b, heads, n, d)


class Attention(nn.Module):
    """Multi-head attention with ``heads`` heads of ``dim_head`` channels.

    Tokens (b, n, query_dim) attend to ``context`` (b, m, context_dim), or to themselves when
    ``context`` is None. An image (b, c, h, w) is the VAE's mid-block attention: ``group_norm``,
    self-attention over the h*w pixels, plus the input. ``slice_size`` (None = off) slices the
    computation over batch*heads, see :func:`attention`; ``set_attention_slice`` sets it.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 bias: bool = False, norm_num_groups: int | None = None, eps: float = 1e-5):
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.is_cross_attention = context_dim is not None  # attends to a context (text), not to x
        self.slice_size: int | None = None
        self.group_norm = nn.GroupNorm(norm_num_groups, query_dim, eps=eps) if norm_num_groups else None
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim)])  # diffusers' to_out.1 is a p=0 dropout
        # fused projection weights (not checkpoint keys): see fuse_projections
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)

    def fuse_projections(self, fuse: bool = True) -> None:
        """Concatenate the input projections into one matrix multiply: q, k and v for self-attention,
        k and v for attention to a ``context`` (which then must be passed). Inference only: the fused
        copy does not follow later weight updates; ``fuse=False`` drops it. Same result up to rounding."""
        if not fuse:
            self.fused_weight = self.fused_bias = None
            return
        layers = [self.to_k, self.to_v] if self.is_cross_attention else [self.to_q, self.to_k, self.to_v]
        with torch.no_grad():
            self.fused_weight = torch.cat([m.weight for m in layers])  # (n*inner, in)
            self.fused_bias = None if layers[0].bias is None else torch.cat([m.bias for m in layers])

    def project(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """q (b, n, inner) from ``x``; k, v (b, m, inner) from ``context`` (``x`` when None)."""
        if self.fused_weight is None:
            context = x if context is None else context
            return self.to_q(x), self.to_k(context), self.to_v(context)
        if not self.is_cross_attention:
            return F.linear(x, self.fused_weight, self.fused_bias).chunk(3, dim=-1)
        kv = F.linear(x if context is None else context, self.fused_weight, self.fused_bias)
        return (self.to_q(x), *kv.chunk(2, dim=-1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim == 4:
            b, c, h, w = x.shape
            tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (b, h*w, c)
            return x + self.forward(tokens).transpose(1, 2).reshape(b, c, h, w)
        q, k, v = self.project(x, context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (b, heads, seq, d)
        out = attention(q, k, v, self.slice_size).transpose(1, 2).flatten(2)  # (b, n, heads*d)
        return self.to_out[0](out)



def set_attention_slice(model: nn.Module, slice_size: str | int | Sequence[int | None] | None) -> None:
    """Slice every :class:`Attention` in ``model`` (exact; see :func:`attention`).

    ``None`` turns slicing off; ``"auto"`` uses half of each layer's heads (at least 1); ``"max"`` one
    (batch*head) row at a time; an int that many rows per slice in every layer (at most the fewest
    heads of any layer); a list gives one value per attention layer, in ``model.modules()`` order.
    """
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    if slice_size is None or slice_size == "max" or slice_size == "auto":
        sizes = [None if slice_size is None else 1 if slice_size == "max" else max(1, m.heads // 2) for m in layers]
    elif isinstance(slice_size, int) and not isinstance(slice_size, bool):
        sizes = [slice_size] * len(layers)
    elif isinstance(slice_size, (list, tuple)):
        if len(slice_size) != len(layers):
            raise ValueError(f"slice_size: a list needs one entry per attention layer ({len(layers)}), "
                             f"got {len(slice_size)}")
        sizes = list(slice_size)
    else:
        raise TypeError(f"slice_size must be None, 'auto', 'max', an int or a list of ints, got {slice_size!r}")
    for layer, size in zip(layers, sizes):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= layer.heads):
            raise ValueError(f"slice_size {size!r} must be an int between 1 and the layer's head count ({layer.heads})")
    for layer, size in zip(layers, sizes):
        layer.slice_size = size


def set_fused_projections(model: nn.Module, fuse: bool = True) -> int:
    """Fuse (or unfuse) the input projections of every :class:`Attention` in ``model`` (see
    :meth:`Attention.fuse_projections`); returns how many layers changed."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    for layer in layers:
        layer.fuse_projections(fuse)
    return len(layers)


def projections_fused(model: nn.Module) -> bool:
    """Whether any :class:`Attention` of ``model`` runs on fused projections (:func:`set_fused_projections`)."""
    return any(m.fused_weight is not None for m in model.modules() if isinstance(m, Attention))

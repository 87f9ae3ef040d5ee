"""Multi-head attention (PyTorch's fused SDPA) shared by the UNet3D denoiser and the VAE, and the switches
that act on every attention layer of a model: slicing and fused projections. Attribute names are diffusers'
checkpoint keys (``to_q``, ``to_k``, ``to_v``, ``to_out.0``, ``group_norm``).

Attention processors work as in diffusers: each layer runs its processor, called as diffusers calls one
(``processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs)``),
and the layer has the attributes and helper methods diffusers' processors read, so a processor written for
diffusers' ``Attention`` (its ``AttnProcessor``, ``AttnProcessor2_0`` or a script's own) runs here unchanged.
Until one is set, a layer runs :class:`SDPAAttnProcessor`, the built-in attention."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

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


class SDPAAttnProcessor:
    """The built-in attention as a processor object: PyTorch's fused SDPA, with the layer's slicing
    (:func:`set_attention_slice`) and fused projections (:func:`set_fused_projections`). Every layer runs it
    until another processor is set; ``attn_processors`` reports it for those layers. It takes no attention
    mask, ``temb`` or extra keyword arguments (the models never pass them)."""

    def __call__(self, attn: "Attention", hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                 temb: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if attention_mask is not None or temb is not None or kwargs:
            passed = (("attention_mask", attention_mask), ("temb", temb))
            given = [k for k, v in passed if v is not None] + sorted(kwargs)
            raise ValueError(f"SDPAAttnProcessor: takes no {given} (set another processor for them)")
        return attn.attend(hidden_states, encoder_hidden_states)


SDPA_PROCESSOR = SDPAAttnProcessor()  # stateless: one instance stands for every layer that runs the built-in


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
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, query_dim), nn.Dropout(0.0)])  # diffusers' layout
        # fused projection weights (not checkpoint keys): see fuse_projections
        self.register_buffer("fused_weight", None, persistent=False)
        self.register_buffer("fused_bias", None, persistent=False)
        self.processor = None  # None: the built-in (SDPA_PROCESSOR); see set_processor
        self.call_kwargs: dict = {}  # a call's cross_attention_kwargs for the processor (set_processor_kwargs)
        # what diffusers' processors read from the layer: the VAE's image attention adds its input back
        self.scale = dim_head**-0.5
        self.residual_connection = norm_num_groups is not None
        self.rescale_output_factor = 1.0
        self.spatial_norm = self.norm_cross = self.norm_q = self.norm_k = None
        self.upcast_attention = self.upcast_softmax = False

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
        """``x`` (b, n, query_dim) or the VAE's image (b, c, h, w); ``context`` (b, m, context_dim) or None.
        A processor set with :meth:`set_processor` also gets the model call's ``cross_attention_kwargs``."""
        if self.processor is None:
            return self.attend(x, context)
        return self.processor(self, x, encoder_hidden_states=context, **self.call_kwargs)

    def get_processor(self):
        """The processor this layer runs (:data:`SDPA_PROCESSOR` until another is set)."""
        return SDPA_PROCESSOR if self.processor is None else self.processor

    def set_processor(self, processor) -> None:
        """Run ``processor`` (a callable taking diffusers' processor arguments) instead of the built-in;
        a :class:`SDPAAttnProcessor` sets the built-in back."""
        if not callable(processor):
            raise TypeError(f"processor: must be callable as processor(attn, hidden_states, ...), got {processor!r}")
        if isinstance(self._modules.get("processor"), nn.Module) and not isinstance(processor, nn.Module):
            del self._modules["processor"]  # an nn.Module processor was a child module: unregister it
        self.processor = None if isinstance(processor, SDPAAttnProcessor) else processor

    def attend(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """The built-in attention (see the class docstring)."""
        if x.ndim == 4:
            b, c, h, w = x.shape
            tokens = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # (b, h*w, c)
            return x + self.attend(tokens).transpose(1, 2).reshape(b, c, h, w)
        q, k, v = self.project(x, context)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (b, heads, seq, d)
        out = attention(q, k, v, self.slice_size).transpose(1, 2).flatten(2)  # (b, n, heads*d)
        return self.to_out[0](out)

    # diffusers' Attention helpers, which its processors call

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int, batch_size: int,
                               out_dim: int = 3) -> torch.Tensor | None:
        """An additive mask (b, n, m) padded with zeros to ``target_length`` keys and repeated per head:
        (b*heads, n, target_length) for ``out_dim`` 3, (b, heads, n, target_length) for 4."""
        if attention_mask is None:
            return None
        if attention_mask.shape[-1] < target_length:
            attention_mask = F.pad(attention_mask, (0, target_length - attention_mask.shape[-1]))
        if out_dim == 3:
            return attention_mask.repeat_interleave(self.heads, dim=0)
        return attention_mask.unsqueeze(1).repeat_interleave(self.heads, dim=1)

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """(b, n, heads*d) -> (b*heads, n, d) for ``out_dim`` 3, (b, heads, n, d) for 4."""
        b, n, _ = tensor.shape
        tensor = tensor.reshape(b, n, self.heads, -1).transpose(1, 2)  # (b, heads, n, d)
        return tensor.reshape(b * self.heads, n, -1) if out_dim == 3 else tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(b*heads, n, d) -> (b, n, heads*d)."""
        bh, n, d = tensor.shape
        return tensor.reshape(bh // self.heads, self.heads, n, d).transpose(1, 2).reshape(bh // self.heads, n, -1)

    def get_attention_scores(self, query: torch.Tensor, key: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention probabilities softmax(scale * q k^T + mask): q (b*heads, n, d), k (b*heads, m, d) ->
        (b*heads, n, m)."""
        scores = self.scale * query @ key.transpose(-1, -2)
        if attention_mask is not None:
            scores = scores + attention_mask
        return scores.softmax(dim=-1).to(query.dtype)


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


def attn_processors(model: nn.Module) -> dict[str, object]:
    """``{"<layer name>.processor": processor}`` for every :class:`Attention` of ``model``, in module order,
    named as diffusers names them (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor``)."""
    return {f"{name}.processor": m.get_processor() for name, m in model.named_modules() if isinstance(m, Attention)}


def set_attn_processor(model: nn.Module, processor) -> None:
    """Set one processor on every attention layer of ``model``, or a dict with one per layer, keyed as
    :func:`attn_processors` keys them (diffusers' ``set_attn_processor``)."""
    layers = {f"{name}.processor": m for name, m in model.named_modules() if isinstance(m, Attention)}
    if isinstance(processor, dict):
        if len(processor) != len(layers):
            raise ValueError(f"processor: the number of processors in the dict ({len(processor)}) does not match "
                             f"the number of attention layers ({len(layers)}); keys as in attn_processors")
        missing = [k for k in layers if k not in processor]
        if missing:
            raise ValueError(f"processor: the dict has no entry for {missing[:3]} (keys as in attn_processors)")
        for key, layer in layers.items():
            layer.set_processor(processor[key])
    else:
        for layer in layers.values():
            layer.set_processor(processor)


def set_processor_kwargs(model: nn.Module, kwargs: dict | None) -> None:
    """Every attention layer of ``model`` passes ``kwargs`` (a call's ``cross_attention_kwargs``) to its
    processor as keyword arguments until they are set again (``None`` or ``{}`` clears them). They are for
    processors set with :func:`set_attn_processor`: a ValueError, before anything runs, if a layer runs the
    built-in."""
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    builtin = sum(m.processor is None for m in layers)
    if kwargs and builtin:
        raise ValueError(f"cross_attention_kwargs: keys {sorted(kwargs)} go to attention processors set with "
                         f"set_attn_processor, but {builtin} of the {len(layers)} layers run the built-in, "
                         f"which takes none")
    for m in layers:
        m.call_kwargs = dict(kwargs or {})


@contextmanager
def processor_kwargs(model: nn.Module, kwargs: dict | None) -> Iterator[None]:
    """:func:`set_processor_kwargs` for the block only (``None`` or ``{}``: the layers are left as they are)."""
    if not kwargs:
        yield
        return
    set_processor_kwargs(model, kwargs)
    try:
        yield
    finally:
        set_processor_kwargs(model, None)


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

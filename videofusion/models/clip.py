"""CLIPTextModel: CLIP's text transformer (Radford et al. 2021), the prompt encoder of ModelScope
text-to-video and zeroscope, with transformers' ``config.json`` keys and state_dict keys.

A token sequence (batch, seq) becomes token + position embeddings (batch, seq, hidden), then
``num_hidden_layers`` pre-LayerNorm transformer layers with causal self-attention (a token sees itself and
the tokens before it), then a final LayerNorm. The pipeline reads the final states (batch, seq, hidden) as the
UNet's cross-attention context, or with ``clip_skip`` an earlier layer's states through the final LayerNorm.

Keys are transformers 5's (``embeddings.token_embedding.weight``, ``encoder.layers.0.self_attn.q_proj.weight``,
``final_layer_norm.bias``, ...), so folders transformers 5 writes load as they are (strict key check). Hub
checkpoints written by transformers 4 carry a ``text_model.`` prefix on every key; loading accepts it
(:mod:`videofusion.models.text`), and :meth:`CLIPTextModel.save_pretrained` writes it, so both transformers
4 and 5 load our folders. ``model.text_model`` is the model itself, for code written for transformers 4
(``text_encoder.text_model.final_layer_norm``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..io.files import (MissingWeightsError, component_folder, load_state_dict, parse_weight_name, read_json,
                        select_weight_files)
from ..io.loading import assign_state_dict, empty_parameters
from ..outputs import Output
from .config import ModelConfig, PretrainedModel, config_to_dict
from .layers import config_error, positive_int

LEGACY_PREFIX = "text_model."  # transformers 4 nests the model in .text_model; its checkpoints say so
TEXT_ENCODER_STEMS = ("model", "pytorch_model")  # transformers: model.safetensors, pytorch_model.bin
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU: x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in this order of operations."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


# config.json "hidden_act" -> the function (names as transformers spells them)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": quick_gelu,  # OpenAI CLIP (SD 1.x)
    "gelu": F.gelu,  # exact, erf; OpenCLIP ViT-H (SD 2.x, ModelScope text-to-video, zeroscope)
    "gelu_new": tanh_gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass
class CLIPTextConfig(ModelConfig):
    """The keys of transformers' ``CLIPTextConfig`` (``config.json`` of a ``text_encoder`` folder), with
    transformers' defaults (OpenAI's ViT-B/32 text tower). Other keys of the file (``architectures``,
    ``dtype``, ``transformers_version``, ...) are read elsewhere or ignored."""

    vocab_size: int = 49408
    hidden_size: int = 512  # channels of every token state
    intermediate_size: int = 2048  # channels inside each MLP
    projection_dim: int = 512  # used by CLIP's projection head only; kept so configs round-trip
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77  # the longest token sequence
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0  # training only
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 1
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407  # 2 (old configs, e.g. SD 2.x's): pool at the highest id instead

    def __post_init__(self):
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings"):
            if not positive_int(getattr(self, key)):
                raise config_error(key, getattr(self, key), "a positive int")
        if self.hidden_size % self.num_attention_heads:
            raise config_error("num_attention_heads", self.num_attention_heads,
                               f"a divisor of hidden_size={self.hidden_size}")
        if self.hidden_act not in ACTIVATIONS:
            raise config_error("hidden_act", self.hidden_act, f"one of {sorted(ACTIVATIONS)}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise config_error("layer_norm_eps", self.layer_norm_eps, "a positive float")
        if not (isinstance(self.attention_dropout, (int, float)) and 0 <= self.attention_dropout < 1):
            raise config_error("attention_dropout", self.attention_dropout, "a float in [0, 1)")


@dataclass
class CLIPTextModelOutput(Output):
    """``last_hidden_state`` (batch, seq, hidden): the final LayerNorm's output. ``pooler_output`` (batch,
    hidden): its state at each sequence's end-of-text token. ``hidden_states``: with
    ``output_hidden_states=True``, ``num_hidden_layers + 1`` tensors (batch, seq, hidden), the embeddings then
    each layer's output (the last one before the final LayerNorm)."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class CLIPTextEmbeddings(nn.Module):
    """Token embedding + learned position embedding: ids (batch, seq) -> (batch, seq, hidden)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        # weights given, so nn.Embedding skips its own init: normal_ on the meta device (loading) imports
        # torch._dynamo, 2 s; CLIPTextModel initialises real weights itself
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                            _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                               _weight=torch.empty(cfg.max_position_embeddings, cfg.hidden_size))
        # not in checkpoints (old transformers 4 files hold it; loading drops it)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq = input_ids.shape[-1]
        limit = self.position_embedding.num_embeddings
        if seq > limit:
            raise ValueError(f"input_ids: {seq} tokens, more than the model's max_position_embeddings={limit}; "
                             "tokenize with truncation=True and max_length at most that")
        if position_ids is None:
            position_ids = self.position_ids[:, :seq]  # (1, seq)
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


class CLIPAttention(nn.Module):
    """Multi-head self-attention, ``num_attention_heads`` heads of ``hidden / heads`` channels, scaled by
    ``head_dim ** -0.5``, through PyTorch's fused ``scaled_dot_product_attention``."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.dropout = cfg.attention_dropout
        # transformers' module order (k, v, q): keyless LoRA lists follow it
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``x`` (b, s, d); ``mask`` None (causal) or bool (b, 1, s, s), True where a query may attend."""
        b, s, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (b, s, d) -> (b, heads, s, d / heads)
            return t.view(b, s, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             attn_mask=mask, is_causal=mask is None,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class CLIPMLP(nn.Module):
    """(b, s, hidden) -> fc1 -> activation -> fc2 -> (b, s, hidden)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: x + attention(LN1(x)), then x + MLP(LN2(x)); (b, s, d) -> (b, s, d)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    """``num_hidden_layers`` :class:`CLIPEncoderLayer` (the key names need this level: ``encoder.layers.N``)."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


def attention_mask_4d(attention_mask: torch.Tensor, seq: int) -> torch.Tensor:
    """Causal mask AND the keys ``attention_mask`` (b, seq) keeps (1 / True: a token, 0 / False: padding),
    as a bool (b, 1, seq, seq), True where query i may attend to key j (j <= i and j kept)."""
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != seq:
        raise ValueError(f"attention_mask: expected shape (batch, {seq}) of 0/1, got {tuple(attention_mask.shape)}")
    causal = torch.ones(seq, seq, dtype=torch.bool, device=attention_mask.device).tril()  # (s, s)
    return causal[None, None] & attention_mask.bool()[:, None, None, :]  # (b, 1, s, s)


class CLIPTextModel(PretrainedModel):
    """The CLIP text encoder, a drop-in for transformers' ``CLIPTextModel`` in the pipelines: called as
    ``model(input_ids)[0]`` or ``model(input_ids, output_hidden_states=True).hidden_states``, with
    ``model.text_model.final_layer_norm`` for ``clip_skip``. Loading: :func:`videofusion.models.text.load_text_encoder`.
    """

    config_class = CLIPTextConfig
    weights_name = "model"  # transformers' file names: model[.variant].safetensors, pytorch_model[.variant].bin

    def __init__(self, config: CLIPTextConfig | dict | None = None, **kwargs):
        super().__init__()
        self.config = cfg = self.make_config(config, **kwargs)
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        std = cfg.initializer_range * cfg.initializer_factor  # a fresh model's embeddings (Linear: PyTorch's init)
        for embedding in (self.embeddings.token_embedding, self.embeddings.position_embedding):
            if not embedding.weight.is_meta:  # built for loading: the checkpoint's weights come next
                nn.init.normal_(embedding.weight, std=std)

    @property
    def text_model(self) -> "CLIPTextModel":
        """The model itself: where transformers 4 kept the layers (``text_model.final_layer_norm``)."""
        return self

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding (vocab_size, hidden_size)."""
        return self.embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.token_embedding = value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                return_dict: bool = True) -> CLIPTextModelOutput | tuple:
        """Encode token ids (batch, seq), seq <= max_position_embeddings.

        ``attention_mask`` (batch, seq), 1 for tokens and 0 for padding: padding keys are hidden from every
        query, on top of the causal mask (default None: causal only, as the pipelines call it).
        ``position_ids`` (batch or 1, seq): default 0..seq-1. Returns :class:`CLIPTextModelOutput`, or with
        ``return_dict=False`` the tuple of its set fields.
        """
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point:
            raise TypeError(f"input_ids: expected an integer tensor (batch, seq), got {type(input_ids).__name__}"
                            + (f" of {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) else ""))
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])  # (b, s)
        x = self.embeddings(input_ids, position_ids)  # (b, s, d)
        mask = None if attention_mask is None else attention_mask_4d(attention_mask.to(x.device), x.shape[1])
        states = [x] if output_hidden_states else None
        for layer in self.encoder.layers:
            x = layer(x, mask)
            if states is not None:
                states.append(x)
        last = self.final_layer_norm(x)  # (b, s, d)
        ids = input_ids.to(last.device)
        # the end-of-text position: the first eos token, or the highest id for configs that say eos = 2
        # (transformers' files before its eos_token_id fix, where end-of-text was the vocabulary's last id)
        end = ids.argmax(-1) if self.config.eos_token_id == 2 else (ids == self.config.eos_token_id).int().argmax(-1)
        pooled = last[torch.arange(last.shape[0], device=last.device), end]  # (b, d)
        out = CLIPTextModelOutput(last, pooled, tuple(states) if states is not None else None)
        return out if return_dict else out.to_tuple()

    # ---------------------------------------------------------------------------------------- files

    def config_dict(self) -> dict:
        """``config.json`` as transformers writes it (its ``model_type``, ``architectures`` and ``dtype``)."""
        return {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
                "dtype": str(self.dtype).removeprefix("torch."), **config_to_dict(self.config)}

    def save_pretrained(self, save_directory: str | os.PathLike, variant: str | None = None,
                        safe_serialization: bool = True, max_shard_size: int | str | None = None) -> None:
        """Write ``config.json`` and ``model[.variant].safetensors`` (``pytorch_model[.variant].bin`` with
        ``safe_serialization=False``) with keys prefixed ``text_model.``, every file atomically: transformers
        4 and 5 load the folder (``transformers.CLIPTextModel.from_pretrained``), as do diffusers' pipelines."""
        from ..io.saving import save_model
        state = {LEGACY_PREFIX + k: v for k, v in self.state_dict().items()}
        save_model(save_directory, self.config_dict(), state, config_name=self.config_name,
                   weights_name="model" if safe_serialization else "pytorch_model", variant=variant,
                   safe_serialization=safe_serialization, max_shard_size=max_shard_size)

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, subfolder: str | None = None,
                        torch_dtype: torch.dtype | None = None, variant: str | None = None,
                        low_cpu_mem_usage: bool = True, **hub_kwargs) -> "CLIPTextModel":
        """Load a transformers ``CLIPTextModel`` folder (or Hub id; ``hub_kwargs``: cache_dir, revision,
        local_files_only). See :func:`videofusion.models.text.load_text_encoder` for ``torch_dtype`` (default:
        the dtype ``config.json`` names, as transformers 5) and ``variant``."""
        from ..io.hub import resolve_pretrained
        root = resolve_pretrained(str(path_or_id), subfolder=subfolder, variant=variant, **hub_kwargs)
        return cls.from_folder(component_folder(root, subfolder), torch_dtype=torch_dtype, variant=variant)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                    variant: str | None = None) -> "CLIPTextModel":
        """The model of a local transformers ``CLIPTextModel`` folder, in eval mode: built on the meta device,
        it takes the memory-mapped weights after a strict key check. ``torch_dtype=None``: see
        :func:`default_dtype`. Errors: a missing ``config.json`` or weights (:func:`text_weight_files`), weights
        that do not fit the config."""
        config = read_json(path, "config.json")
        files = text_weight_files(path, variant)
        state_dict = fit_keys(load_state_dict(path, parse_weight_name(files[0]).stem, variant))  # memory-mapped
        with empty_parameters():
            model = cls(cls.make_config(config))
        dtype = torch_dtype if torch_dtype is not None else default_dtype(config, state_dict)
        assign_state_dict(model, state_dict, dtype, source=str(path))
        return model.eval()


def text_weight_files(path: str | os.PathLike, variant: str | None) -> list[str]:
    """The weight files of ``variant`` in a text encoder folder (``model[.variant].safetensors``, else
    ``pytorch_model[.variant].bin``, shards likewise); MissingWeightsError listing the weight files there when
    there are none."""
    names = sorted(os.listdir(path))
    files = select_weight_files(names, variant, stems=TEXT_ENCODER_STEMS)
    if not files:
        there = [n for n in names if n.endswith((".safetensors", ".bin", ".index.json"))]
        raise MissingWeightsError(f"no text encoder weights of variant {variant!r} in {path}; weight files there: "
                                  f"{there}")
    return files


def default_dtype(config: dict, state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype transformers 5 gives a text encoder loaded without ``torch_dtype``: the one ``config.json``
    names (``dtype``, or ``torch_dtype`` in older files), else that of the weights, else float32."""
    named = config.get("dtype", config.get("torch_dtype"))
    if isinstance(named, str) and named.removeprefix("torch.") in _DTYPES:
        return _DTYPES[named.removeprefix("torch.")]
    floating = [v.dtype for v in state_dict.values() if v.is_floating_point()]
    return floating[0] if floating else torch.float32


def fit_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's keys as :class:`CLIPTextModel` names them: the ``text_model.`` prefix of transformers 4's
    files dropped (when every key has it) and their ``position_ids`` buffer left out (a constant, 0..n-1, that
    the model computes); every other key is kept as it is, for the strict check."""
    if state_dict and all(k.startswith(LEGACY_PREFIX) for k in state_dict):
        state_dict = {k[len(LEGACY_PREFIX):]: v for k, v in state_dict.items()}
    state_dict.pop("embeddings.position_ids", None)
    return state_dict


"""Prompts into CLIP embeddings (:func:`embed_texts`), with optional prompt weighting in the syntax sd-webui (AUTOMATIC1111, and its text2video extension) users write:
``(word)`` weighs ``word`` 1.1 times, ``((word))`` 1.21, ``[word]`` 1/1.1, ``(some words:1.3)`` 1.3; ``\\(``,
``\\)``, ``\\[``, ``\\]`` are literal brackets. compel reads a different syntax (``word++``, ``(word)1.3``), so
this is a small parser of ours.

The weights act as in sd-webui ("original" emphasis): each token's CLIP embedding is multiplied by its
weight, then the prompt's whole embedding is rescaled to its unweighted mean. A prompt whose weights are all 1
is tokenized as the plain text, so its embeddings are the plain prompt's bit for bit.
"""
from __future__ import annotations

import logging
import re

import torch

logger = logging.getLogger(__name__)

ROUND, SQUARE = 1.1, 1 / 1.1
_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*(?P<w>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|[\\:]")


def parse_weights(text: str) -> list[tuple[str, float]]:
    """``text`` as (segment, weight) pairs, adjacent segments of equal weight merged; unclosed brackets weigh
    the rest of the text, a stray closing bracket is text. ``"a (red:1.5) [big] ball"`` ->
    ``[("a ", 1.0), ("red", 1.5), (" ", 1.0), ("big", 0.909...), (" ball", 1.0)]``."""
    segments: list[list] = []  # [text, weight]
    open_round: list[int] = []
    open_square: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for segment in segments[start:]:
            segment[1] *= factor

    for m in _TOKEN.finditer(text):
        token = m.group(0)
        if len(token) == 2 and token[0] == "\\":
            segments.append([token[1], 1.0])
        elif token == "(":
            open_round.append(len(segments))
        elif token == "[":
            open_square.append(len(segments))
        elif m["w"] is not None and open_round:
            multiply(open_round.pop(), float(m["w"]))
        elif token == ")" and open_round:
            multiply(open_round.pop(), ROUND)
        elif token == "]" and open_square:
            multiply(open_square.pop(), SQUARE)
        else:
            segments.append([token, 1.0])
    for start in open_round:
        multiply(start, ROUND)
    for start in open_square:
        multiply(start, SQUARE)
    merged: list[list] = []
    for text_, weight in segments:
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text_
        else:
            merged.append([text_, weight])
    return [(t, w) for t, w in merged if t] or [("", 1.0)]


def weighted_tokens(tokenizer, segments: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
    """Token ids (begin and end tokens included, not padded or cut) and one weight per id."""
    ids, weights = [], []
    for text, weight in segments:
        tokens = tokenizer(text).input_ids[1:-1]  # without its begin / end tokens
        ids += tokens
        weights += [weight] * len(tokens)
    bos, eos = tokenizer("").input_ids[:2]
    return [bos, *ids, eos], [1.0, *weights, 1.0]


def weighted_batch(tokenizer, texts: list[str]) -> tuple[list[str] | None, torch.Tensor, torch.Tensor]:
    """For ``texts``: the plain texts when every weight is 1 (tokenize them as usual), else None and the ids
    ``(n, max_length)`` and weights ``(n, max_length)``, cut to the tokenizer's length (end token kept) and
    padded with its pad token at weight 1."""
    parsed = [parse_weights(t) for t in texts]
    if all(w == 1.0 for segments in parsed for _, w in segments):
        return ["".join(t for t, _ in segments) for segments in parsed], None, None
    limit = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer("").input_ids[-1]
    rows, row_weights = [], []
    for segments in parsed:
        ids, weights = weighted_tokens(tokenizer, segments)
        if len(ids) > limit:
            ids, weights = ids[:limit - 1] + ids[-1:], weights[:limit - 1] + weights[-1:]
        rows.append(ids + [pad] * (limit - len(ids)))
        row_weights.append(weights + [1.0] * (limit - len(weights)))
    return None, torch.tensor(rows), torch.tensor(row_weights)


def emphasize(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``embeddings`` (n, tokens, dim) times ``weights`` (n, tokens), each prompt rescaled to its unweighted
    mean (sd-webui's "original" emphasis); computed in float32, returned in the embeddings' dtype.

    A text encoder whose output has a mean of zero (a final layer norm without bias, as the demo model's)
    makes that ratio one of rounding errors (measured on the demo: from -12 to 12, or 0/0); where either
    mean is below 1e-3 of the mean magnitude the prompt is left unrescaled (sd-webui's "no norm")."""
    z = embeddings.float()
    weighted = z * weights.to(z.device, z.dtype)[..., None]  # (n, tokens, dim)
    mean, new_mean = z.mean(dim=(1, 2), keepdim=True), weighted.mean(dim=(1, 2), keepdim=True)  # (n, 1, 1)
    floor = 1e-3 * z.abs().mean(dim=(1, 2), keepdim=True)
    defined = (mean.abs() > floor) & (new_mean.abs() > floor)
    scale = torch.where(defined, mean / torch.where(defined, new_mean, 1.0), 1.0)
    return (weighted * scale).to(embeddings.dtype)


def embed_texts(tokenizer, text_encoder, texts: list[str], device: torch.device, clip_skip: int | None = None,
                weighting: bool = False) -> torch.Tensor:
    """CLIP embeddings ``(n, max_length, dim)`` of ``texts``: the last layer's, or with ``clip_skip`` the hidden
    state that many layers before it through the final layer norm; with ``weighting``, sd-webui's syntax
    (:func:`parse_weights`, :func:`emphasize`)."""
    weights = None
    if weighting:
        plain, ids, weights = weighted_batch(tokenizer, texts)
        texts = plain or texts
    if weights is None:
        ids = token_ids(tokenizer, texts)
    ids = ids.to(device)
    if clip_skip is None:
        embeddings = text_encoder(ids)[0]
    else:
        hidden = text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        # transformers 5's CLIPTextModel holds its layers itself; 4's (and diffusers' scripts) in .text_model
        embeddings = getattr(text_encoder, "text_model", text_encoder).final_layer_norm(hidden)
    return embeddings if weights is None else emphasize(embeddings, weights)


def token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    """``(n, max_length)`` token ids, padded and cut as diffusers does (and warning, as it does, about the cut)."""
    limit = tokenizer.model_max_length
    ids = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt").input_ids
    whole = tokenizer(texts, padding="longest", return_tensors="pt", verbose=False).input_ids  # (n, >= 77 if cut)
    if whole.shape[-1] > limit:  # say what CLIP cannot see
        cut = tokenizer.batch_decode(whole[:, limit - 1:-1], skip_special_tokens=True)
        logger.warning("The following part of your input was truncated because CLIP can only handle "
                       "sequences up to %d tokens: %s", limit, [c for c in cut if c])
    return ids

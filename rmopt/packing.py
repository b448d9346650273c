"""Padding-free forward passes for training: the real tokens of a padded batch packed into one row.

A batch padded to its longest row spends the model's per-token work (every linear layer, layer norm
and MLP: nearly all of it) on padding too; with short, varied answers that is a third or more of
the compute. :func:`pack` lists the real tokens of a right- or left-padded batch in row order,
:func:`packed_hidden_states` runs the model's own modules on them as one ``[1, N]`` row (positions
restarting at each sequence), and only attention sees the sequences apart: :func:`packed_attention`
lays queries, keys and values out as ``[B, heads, longest, d]`` again (each sequence from position
0) and runs causal attention there. Every real token sees the same keys at the same positions as in
the padded forward, so hidden states, scores and losses are the padded forward's up to float
rounding. The last layer can also skip the tokens nobody reads (``keep``).

Used for transformers' GPT-NeoX models (Pythia, the toy models), whose forward it follows; other
models, and models with activation checkpointing (which this forward would not apply), keep the
padded forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("gpt_neox",)


@dataclass
class Packing:
    """Where the real tokens of a padded ``[B, T]`` batch are; N = number of real tokens."""

    rows: int  # B
    width: int  # the longest sequence
    source: torch.Tensor  # [N] flat index of each real token in the padded [B * T] batch, row by row
    target: torch.Tensor  # [N] flat index in a [B * width] right-padded layout (for attention)
    position_ids: torch.Tensor  # [1, N] position of each token in its own sequence
    last: torch.Tensor  # [B] index (in 0..N-1) of each row's last token

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """The real tokens of a padded ``[B, T, ...]`` tensor, as ``[N, ...]``."""
        return x.reshape(-1, *x.shape[2:])[self.source]


def pack(attention_mask: torch.Tensor, drop_last: bool = False) -> Packing | None:
    """The packing of a batch whose rows are each one run of ones (right or left padding); None otherwise.

    ``drop_last`` leaves out each row's last token (for next-token losses, where it predicts nothing and,
    coming last, is no other token's key); None if that empties a row."""
    mask = attention_mask.bool()
    if mask.dim() != 2 or mask.size(0) == 0:
        return None
    lengths = mask.sum(1)
    if bool((lengths <= int(drop_last)).any()):
        return None
    # one contiguous run per row: the first and last ones are lengths - 1 apart
    first = mask.int().argmax(1)
    last_col = mask.size(1) - 1 - mask.flip(1).int().argmax(1)
    if not bool((last_col - first + 1 == lengths).all()):
        return None
    if drop_last:
        mask = mask.clone()
        mask[torch.arange(mask.size(0), device=mask.device), last_col] = False
        lengths = lengths - 1
    rows, width = mask.size(0), int(lengths.max())
    source = mask.flatten().nonzero().squeeze(1)
    ends = lengths.cumsum(0)
    starts = ends - lengths
    row_of = torch.repeat_interleave(torch.arange(rows, device=mask.device), lengths)
    pos = torch.arange(source.numel(), device=mask.device) - starts[row_of]
    return Packing(rows, width, source, row_of * width + pos, pos.unsqueeze(0), ends - 1)


def supports_packing(model) -> bool:
    """A GPT-NeoX model without activation checkpointing (whose recomputation in the backward pass would run
    with the model's own attention, outside :func:`packed_hidden_states`)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return False
    if not _plain_gpt_neox(model.base_model):
        return False
    # one pass over the modules: transformers' gradient checkpointing flag, FSDP's checkpoint wrappers
    return not any(
        vars(m).get("gradient_checkpointing") is True or type(m).__name__ == "CheckpointWrapper"
        for m in model.modules()
    )


# Widths up to this use plain batched-matrix-product attention (scores, causal mask, softmax): at short
# lengths it is faster than PyTorch's fused CPU kernel, whose fixed cost per (row, head) dominates there;
# longer rows keep the fused kernel (memory linear in the width).
PLAIN_ATTENTION_MAX_WIDTH = 48


@dataclass
class _Rotary:
    """Rotary-embedding tables for the packed tokens: ``rotate(x)`` is transformers' ``apply_rotary_pos_emb``
    on one ``[N, heads, head_size]`` tensor (the first ``dims`` of each head turned by position)."""

    cos: torch.Tensor  # [N, 1, dims]
    sin: torch.Tensor  # [N, 1, dims], first half negated: rotate_half's sign folded in
    dims: int

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        rot, half = x[..., : self.dims], self.dims // 2
        turned = torch.cat([rot[..., half:], rot[..., :half]], dim=-1)  # rotate_half without its negation
        rot = rot * self.cos + turned * self.sin
        return rot if self.dims == x.size(-1) else torch.cat([rot, x[..., self.dims :]], dim=-1)


def _rotary(base, packing: Packing, like: torch.Tensor) -> _Rotary:
    cos, sin = base.rotary_emb(like, position_ids=packing.position_ids)  # [1, N, dims]
    half = cos.size(-1) // 2
    sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return _Rotary(cos[0].unsqueeze(1), sin[0].unsqueeze(1), cos.size(-1))


def _causal_mask(packing: Packing, like: torch.Tensor) -> torch.Tensor | None:
    """The additive causal mask of the plain attention path; None for rows long enough for the fused kernel."""
    if packing.width > PLAIN_ATTENTION_MAX_WIDTH:
        return None
    return torch.full((packing.width, packing.width), float("-inf"), dtype=like.dtype, device=like.device).triu(1)


def packed_attention(query, key, value, packing: Packing, scaling: float, dropout: float = 0.0,
                     rows: torch.Tensor | None = None, causal: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence: ``[N, heads, d]`` queries, keys and values in,
    ``[N, heads * d]`` out (or only the tokens at ``rows``, indices into 0..N-1).

    The tokens are laid out as ``[B, width]`` rows again (each sequence from position 0, zeros after it),
    where causal attention alone keeps every real query on its own sequence; padding queries are
    computed and dropped. ``causal``: :func:`_causal_mask` (rows of up to ``PLAIN_ATTENTION_MAX_WIDTH``
    tokens: plain batched matrix products), None for PyTorch's fused kernel."""
    p, heads, d = packing, query.size(1), query.size(2)

    def spread(x):  # [N, h, d] -> [h * B, width, d]: one [width, d] block per (head, row), free to reshape
        out = x.new_zeros(heads, p.rows * p.width, d).index_copy_(1, p.target, x.transpose(0, 1))
        return out.view(heads * p.rows, p.width, d)

    q, k, v = spread(query), spread(key), spread(value)
    if causal is not None:
        scores = torch.baddbmm(causal.to(q.dtype).expand(q.size(0), -1, -1), q, k.transpose(1, 2), alpha=scaling)
        probs = scores.softmax(-1) if scores.dtype == torch.float32 else scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        if dropout > 0.0:
            probs = F.dropout(probs, p=dropout, training=True)
        out = torch.bmm(probs, v)
    else:
        def rows4(x):  # [B, h, width, d] views
            return x.view(heads, p.rows, p.width, d).transpose(0, 1)

        out = F.scaled_dot_product_attention(rows4(q), rows4(k), rows4(v), dropout_p=dropout, is_causal=True, scale=scaling)
        out = out.transpose(0, 1)
    out = out.reshape(heads, p.rows * p.width, d).transpose(0, 1)  # [B * width, h, d]
    return out.index_select(0, p.target if rows is None else p.target[rows]).view(-1, heads * d)


def packed_hidden_states(model, input_ids: torch.Tensor, packing: Packing, keep: torch.Tensor | None = None,
                         start: tuple[int, torch.Tensor] | None = None) -> torch.Tensor:
    """The base model's last hidden states of the real tokens, ``[N, hidden]`` in :class:`Packing` order, or only
    of the tokens at ``keep`` (indices into 0..N-1), ``[len(keep), hidden]``.

    With ``keep``, the last layer does its per-token work after attention (output projection, MLP, final
    norm) on those tokens only: every token's keys and values are still computed, so the kept tokens'
    states are the same; an RM reads one token per sequence, SFT only the tokens that predict answer tokens.
    ``start = (n, hidden)`` continues from :func:`packed_bottom` ``(model, input_ids, packing, n)`` (e.g. the
    output of layers a policy and its reference share) instead of from the embeddings.
    Follows ``GPTNeoXModel.forward`` (no cache, no mask, the layers' own modules and dropouts).
    """
    base = model.base_model
    first, hidden = start if start is not None else (0, base.emb_dropout(base.embed_in(packing.take(input_ids))))
    hidden = _layers(base, hidden, packing, range(first, len(base.layers)), keep)
    return base.final_layer_norm(hidden)


def packed_bottom(model, input_ids: torch.Tensor, packing: Packing, layers: int) -> torch.Tensor:
    """The real tokens' hidden states after the embeddings and the first ``layers`` layers, ``[N, hidden]``."""
    base = model.base_model
    hidden = base.emb_dropout(base.embed_in(packing.take(input_ids)))
    return _layers(base, hidden, packing, range(layers), None)


def _layers(base, hidden: torch.Tensor, packing: Packing, indices: range, keep: torch.Tensor | None) -> torch.Tensor:
    """``GPTNeoXLayer.forward`` of the layers at ``indices`` on packed tokens; the last of all layers reads only ``keep``."""
    rotary, causal = _rotary(base, packing, hidden), _causal_mask(packing, hidden)
    last = len(base.layers) - 1
    for i in indices:
        layer = base.layers[i]
        rows = keep if i == last else None
        attention = layer.attention
        qkv = attention.query_key_value(layer.input_layernorm(hidden))
        query, key, value = qkv.view(qkv.size(0), -1, 3, attention.head_size).unbind(2)
        dropout = attention.attention_dropout if attention.training else 0.0
        out = packed_attention(rotary.rotate(query), rotary.rotate(key), value, packing, attention.scaling, dropout, rows, causal)
        residual = hidden if rows is None else hidden[rows]
        attn_output = layer.post_attention_dropout(attention.dense(out))
        if layer.use_parallel_residual:
            mlp_output = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(residual)))
            hidden = mlp_output + attn_output + residual
        else:
            attn_output = attn_output + residual
            hidden = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn_output))) + attn_output
    return hidden


def _plain_gpt_neox(base) -> bool:
    """transformers' own GPT-NeoX classes, whose forward :func:`packed_hidden_states` follows."""
    from transformers.models.gpt_neox import modeling_gpt_neox as neox

    return type(base) is neox.GPTNeoXModel and all(
        type(layer) is neox.GPTNeoXLayer
        and type(layer.attention) is neox.GPTNeoXAttention
        and type(layer.mlp) is neox.GPTNeoXMLP
        for layer in base.layers
    )

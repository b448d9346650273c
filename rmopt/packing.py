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


def pack(attention_mask: torch.Tensor) -> Packing | None:
    """The packing of a batch whose rows are each one run of ones (right or left padding); None otherwise."""
    mask = attention_mask.bool()
    if mask.dim() != 2 or mask.size(0) == 0:
        return None
    lengths = mask.sum(1)
    if bool((lengths == 0).any()):
        return None
    # one contiguous run per row: the first and last ones are lengths - 1 apart
    first = mask.int().argmax(1)
    last_col = mask.size(1) - 1 - mask.flip(1).int().argmax(1)
    if not bool((last_col - first + 1 == lengths).all()):
        return None
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


def packed_attention(query, key, value, packing: Packing, scaling: float, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention within each packed sequence: ``[1, heads, N, d]`` in, ``[N, heads, d]`` out."""
    p, heads, d = packing, query.size(1), query.size(3)

    def spread(x):  # [1, h, N, d] -> [B, h, width, d], each sequence from position 0, zeros after it
        flat = x[0].transpose(0, 1)
        out = flat.new_zeros(p.rows * p.width, heads, d).index_copy(0, p.target, flat)
        return out.view(p.rows, p.width, heads, d).transpose(1, 2)

    out = F.scaled_dot_product_attention(
        spread(query), spread(key), spread(value), dropout_p=dropout, is_causal=True, scale=scaling
    )
    return out.transpose(1, 2).reshape(p.rows * p.width, heads, d).index_select(0, p.target)


def packed_hidden_states(model, input_ids: torch.Tensor, packing: Packing, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The base model's last hidden states of the real tokens, ``[N, hidden]`` in :class:`Packing` order, or only
    of the tokens at ``keep`` (indices into 0..N-1), ``[len(keep), hidden]``.

    With ``keep``, the last layer does its per-token work after attention (output projection, MLP, final
    norm) on those tokens only: every token's keys and values are still computed, so the kept tokens'
    states are the same; an RM reads one token per sequence, SFT only the tokens that predict answer tokens.
    Follows ``GPTNeoXModel.forward`` (no cache, no mask, the layers' own modules and dropouts).
    """
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    base = model.base_model
    hidden = base.emb_dropout(base.embed_in(packing.take(input_ids).unsqueeze(0)))  # [1, N, hidden]
    position_embeddings = base.rotary_emb(hidden, position_ids=packing.position_ids)
    last = len(base.layers) - 1
    for i, layer in enumerate(base.layers):  # GPTNeoXLayer.forward
        rows = keep if i == last else None
        attention, n = layer.attention, hidden.size(1)
        qkv = attention.query_key_value(layer.input_layernorm(hidden))
        query, key, value = qkv.view(1, n, -1, 3 * attention.head_size).transpose(1, 2).chunk(3, dim=-1)
        query, key = apply_rotary_pos_emb(query, key, *position_embeddings)
        dropout = attention.attention_dropout if attention.training else 0.0
        out = packed_attention(query, key, value, packing, attention.scaling, dropout)  # [N, heads, d]
        residual = hidden if rows is None else hidden[0, rows]
        out = out.reshape(1, n, -1) if rows is None else out[rows].reshape(rows.numel(), -1)
        attn_output = layer.post_attention_dropout(attention.dense(out))
        if layer.use_parallel_residual:
            mlp_output = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(residual)))
            hidden = mlp_output + attn_output + residual
        else:
            attn_output = attn_output + residual
            hidden = layer.post_mlp_dropout(layer.mlp(layer.post_attention_layernorm(attn_output))) + attn_output
    hidden = base.final_layer_norm(hidden)
    return hidden[0] if keep is None else hidden


def _plain_gpt_neox(base) -> bool:
    """transformers' own GPT-NeoX classes, whose forward :func:`packed_hidden_states` follows."""
    from transformers.models.gpt_neox import modeling_gpt_neox as neox

    return type(base) is neox.GPTNeoXModel and all(
        type(layer) is neox.GPTNeoXLayer
        and type(layer.attention) is neox.GPTNeoXAttention
        and type(layer.mlp) is neox.GPTNeoXMLP
        for layer in base.layers
    )

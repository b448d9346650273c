"""KV-cached decoding for GPT-NeoX without the per-call framework around it, with the model's numbers.

Sampling runs the policy's forward once per new token. For the toy models (1M parameters, a batch
of 8-256 rows, one token each) the arithmetic of a step is a fraction of its cost: the rest is the
machinery of a general forward (module calls and hooks, config look-ups, the cache object, the
causal-mask builder, output classes). :class:`NeoXDecoder` runs the prompt through the model's own
forward once, then each new token through the same tensor operations as transformers'
``GPTNeoXModel.forward`` with SDPA attention, in the same order, on the same cached keys and
values. The logits are therefore the model's own, bit for bit (tested against its cached forward on CPU);
models it does not follow keep their own forward (:func:`decoder_for` gives a :class:`CachedForward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NeoXDecoder:
    """Prefill with the model's forward, then one token at a time by hand; call :meth:`prefill` first."""

    def __init__(self, model):
        base = model.base_model
        self.model = model
        self.embed = base.embed_in.weight
        self.layers = base.layers
        self.final_norm = base.final_layer_norm
        self.head = model.get_output_embeddings()
        self.inv_freq = base.rotary_emb.inv_freq
        self.rope_scaling = base.rotary_emb.attention_scaling
        attention = self.layers[0].attention
        self.head_size = attention.head_size
        self.rotary_ndims = attention.rotary_ndims
        self.scaling = attention.scaling
        # each layer's tensors looked up once (a module attribute costs a Python call each time, ~100 a token)
        self.plan = [_LayerPlan(layer) for layer in self.layers]
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def prefill(self, input_ids, attention_mask, position_ids, new_tokens: int) -> torch.Tensor:
        """The prompts' forward (the model's own); returns the last position's logits [B, V] and keeps the cache,
        in buffers with room for ``new_tokens`` more positions."""
        result = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True)
        cache = result.cache if hasattr(result, "cache") else result.past_key_values
        self.length = input_ids.size(1)
        self.keys, self.values = [], []
        layers = getattr(cache, "layers", None)  # transformers' DynamicCache; else (key, value) per layer
        for keys, values in ((layer.keys, layer.values) for layer in layers) if layers is not None else cache:
            for cached, buffers in ((keys, self.keys), (values, self.values)):
                b, h, n, d = cached.shape
                buffer = cached.new_empty(b, h, n + new_tokens, d)
                buffer[:, :, :n] = cached
                buffers.append(buffer)
        # SDPA's additive form of the boolean mask transformers passes (0 where attended, -inf at padding), made
        # once for every position to come (new tokens are always attended), not in each layer of each step;
        # no padding now, none later: transformers passes no mask
        self.mask = None
        if not bool(attention_mask.all()):
            keep = torch.cat([attention_mask.bool(), attention_mask.new_ones(attention_mask.size(0), new_tokens, dtype=torch.bool)], 1)
            additive = torch.zeros(keep.shape, dtype=self.keys[0].dtype, device=keep.device).masked_fill_(~keep, float("-inf"))
            self.mask = additive[:, None, None, :]
        return result.logits[:, -1, :]

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only these rows (indices into the rows decoded now) of the cache and mask: later steps run on them."""
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)

    def step(self, ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] for one new token per row: ``ids`` and ``position_ids`` [B, 1]; ``attention_mask`` [B, L]
        covering the cache and this token is the prefill's mask with ones after it (the decoder keeps that mask
        itself). Follows ``GPTNeoXModel.forward`` in eval mode (no dropout)."""
        hidden = F.embedding(ids, self.embed)  # [B, 1, H]
        batch = hidden.size(0)
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=hidden.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.rope_scaling != 1.0:  # times 1.0 changes nothing
            cos, sin = cos * self.rope_scaling, sin * self.rope_scaling
        cos5 = cos.to(hidden.dtype)[:, None, :, None, :]  # [B, 1, 1, 1, rotary]: over (query, key)
        sin5 = sin.to(hidden.dtype)[:, None, :, None, :]
        r, n = self.rotary_ndims, self.length
        mask = None if self.mask is None else self.mask[..., : n + 1]
        self.length += 1
        hs = self.head_size
        for i, lp in enumerate(self.plan):  # GPTNeoXLayer.forward
            x = F.layer_norm(hidden, lp.ln1_shape, lp.ln1_weight, lp.ln1_bias, lp.ln1_eps)
            qkv = F.linear(x, lp.qkv_weight, lp.qkv_bias)
            qkv = qkv.view(batch, 1, -1, 3 * hs).transpose(1, 2)
            value = qkv[..., 2 * hs :]
            # query and key turned in one pass (the same element-wise operations as apply_rotary_pos_emb)
            query_key = _rotate(qkv[..., : 2 * hs].unflatten(-1, (2, hs)), cos5, sin5, r)
            query, key = query_key[..., 0, :], query_key[..., 1, :]
            self.keys[i][:, :, n] = key[:, :, 0]
            self.values[i][:, :, n] = value[:, :, 0]
            out = F.scaled_dot_product_attention(
                query, self.keys[i][:, :, : n + 1], self.values[i][:, :, : n + 1], attn_mask=mask, dropout_p=0.0,
                scale=self.scaling, is_causal=False,
            )
            out = out.reshape(batch, 1, -1)  # [B, heads, 1, hs] -> [B, 1, heads * hs]: one position, the same order
            attn_output = F.linear(out, lp.dense_weight, lp.dense_bias)
            if lp.parallel:
                hidden = lp.mlp(hidden) + attn_output + hidden
            else:
                attn_output = attn_output + hidden
                hidden = lp.mlp(attn_output) + attn_output
        norm = self.final_norm
        hidden = F.layer_norm(hidden, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return F.linear(hidden, self.head.weight, self.head.bias)[:, -1, :]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, r: int) -> torch.Tensor:
    """``apply_rotary_pos_emb`` of transformers' GPT-NeoX for query or key (or both, stacked on the next-to-last axis)."""
    x_rot, x_pass = x[..., :r], x[..., r:]
    half = x_rot.shape[-1] // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat([(x_rot * cos) + (rotated * sin), x_pass], dim=-1)


class _LayerPlan:
    """One ``GPTNeoXLayer``'s tensors and settings for :meth:`NeoXDecoder.step` (the live parameters: training
    updates them in place)."""

    def __init__(self, layer):
        attention, ln1, ln2, mlp = layer.attention, layer.input_layernorm, layer.post_attention_layernorm, layer.mlp
        self.ln1_shape, self.ln1_weight, self.ln1_bias, self.ln1_eps = ln1.normalized_shape, ln1.weight, ln1.bias, ln1.eps
        self.qkv_weight, self.qkv_bias = attention.query_key_value.weight, attention.query_key_value.bias
        self.dense_weight, self.dense_bias = attention.dense.weight, attention.dense.bias
        self.parallel = layer.use_parallel_residual
        self.ln2_shape, self.ln2_weight, self.ln2_bias, self.ln2_eps = ln2.normalized_shape, ln2.weight, ln2.bias, ln2.eps
        self.up_weight, self.up_bias = mlp.dense_h_to_4h.weight, mlp.dense_h_to_4h.bias
        self.down_weight, self.down_bias = mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias
        self.act = mlp.act

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, self.ln2_shape, self.ln2_weight, self.ln2_bias, self.ln2_eps)
        x = F.linear(x, self.up_weight, self.up_bias)
        return F.linear(self.act(x), self.down_weight, self.down_bias)


class CachedForward:
    """Any causal LM's own forward on its own cache, with :class:`NeoXDecoder`'s interface."""

    def __init__(self, model):
        self.model, self.key, self.cache = model, _cache_keyword(model), None

    def prefill(self, input_ids, attention_mask, position_ids, new_tokens: int) -> torch.Tensor:
        self.cache = None
        return self.step(input_ids, attention_mask, position_ids)

    def step(self, ids, attention_mask, position_ids) -> torch.Tensor:
        result = self.model(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                            **{self.key: self.cache})
        self.cache = getattr(result, self.key)
        return result.logits[:, -1, :]


def _cache_keyword(model) -> str:
    """The KV cache's name in a model's forward and output: ``cache`` from transformers 5.24 on,
    ``past_key_values`` before (the name the model's signature shows; else the installed version's)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    for key in ("cache", "past_key_values"):
        if key in params:
            return key
    import transformers
    from packaging.version import Version

    return "cache" if Version(transformers.__version__) >= Version("5.24.0.dev0") else "past_key_values"


def decoder_for(model) -> NeoXDecoder | CachedForward:
    """A :class:`NeoXDecoder` for transformers' own GPT-NeoX causal LM with SDPA attention, default rotary
    embeddings and no active dropout; the model's own cached forward for anything else."""
    from transformers.models.gpt_neox import modeling_gpt_neox as neox

    from rmopt.packing import _plain_gpt_neox

    if type(model) is not neox.GPTNeoXForCausalLM or not _plain_gpt_neox(model.base_model) or not _plain_modules(model):
        return CachedForward(model)
    config = model.config
    if config._attn_implementation != "sdpa" or model.base_model.rotary_emb.rope_type != "default":
        return CachedForward(model)
    dropout = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0 and m.training]
    if dropout or (model.training and config.attention_dropout > 0):
        return CachedForward(model)
    return NeoXDecoder(model)


def _plain_modules(model) -> bool:
    """Every submodule one whose forward :meth:`NeoXDecoder.step` writes out (plain linear, norm and embedding
    layers, the activation), with no hooks: adapters (LoRA), quantized layers or offloading hooks change the
    forward, so such models keep their own."""
    from torch import nn
    from transformers import activations
    from transformers.models.gpt_neox import modeling_gpt_neox as neox

    plain = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.Dropout, nn.ModuleList, neox.GPTNeoXForCausalLM, neox.GPTNeoXModel,
             neox.GPTNeoXLayer, neox.GPTNeoXAttention, neox.GPTNeoXMLP, neox.GPTNeoXRotaryEmbedding)
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if type(m) not in plain and type(m).__module__ not in (activations.__name__, nn.modules.activation.__name__):
            return False
    return True

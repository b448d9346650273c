"""Batched, KV-cached sampling of answers from a causal LM in the prompt format."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rmopt.data.collate import pad
from rmopt.decode import decoder_for
from rmopt.prompts import format_prompt


@dataclass
class Samples:
    """Answers to a batch of prompts: answer ids (EOS included when reached) and their text."""

    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]  # whether the answer ended with EOS within the token budget


def encode_prompts(tokenizer, instructions, inputs) -> list[list[int]]:
    prompts = [format_prompt(i, x) for i, x in zip(instructions, inputs, strict=True)]
    return tokenizer(prompts, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def sample_ids(
    model,
    prompt_ids: list[list[int]],
    eos_token_id: int,
    pad_token_id: int,
    max_new_tokens: int | Sequence[int] = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Sample one answer per prompt (left padding, KV cache); each answer stops after its EOS.

    An answer is every token sampled for its row, up to and including its first EOS (or all
    ``max_new_tokens`` when it never samples EOS). A sampled pad id is an answer token like any
    other: padding only exists after an answer's end, and each row's length says where that is.
    ``max_new_tokens`` may be one budget per row (e.g. what a length limit leaves after each prompt),
    so a long prompt does not shorten the other answers of its batch.

    A plain loop over new tokens on a KV cache (:func:`rmopt.decode.decoder_for`: by hand for GPT-NeoX, with the
    model's own logits): no per-step logits-processor machinery, which dominates the cost for small models.
    """
    device = next(model.parameters()).device
    input_ids = pad(prompt_ids, pad_token_id, side="left").to(device)
    attention_mask = pad([[1] * len(p) for p in prompt_ids], 0, side="left").to(device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    batch = input_ids.size(0)
    caps = torch.as_tensor(max_new_tokens, dtype=torch.long, device=device).expand(batch).clone()
    if int(caps.min()) < 1:
        raise ValueError(f"max_new_tokens must be >= 1 for every row, got {caps.tolist()}")
    max_new_tokens = int(caps.max())
    out = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    lengths = caps.clone()  # tokens of each answer: its budget unless it samples EOS first
    decoder = decoder_for(model)
    logits = decoder.prefill(input_ids, attention_mask, position_ids, max_new_tokens - 1).float()
    width = input_ids.size(1)
    # the mask of every step to come, each step's a view of it (new tokens are always attended)
    masks = torch.cat([attention_mask, attention_mask.new_ones(batch, max_new_tokens - 1)], dim=1)
    step_pos = position_ids[:, -1:]
    rows = None  # the rows the decoder still runs (None: all); finished rows are dropped from it
    for t in range(max_new_tokens):
        drawn = _sample(logits, temperature, top_p, generator, rows, batch)
        next_ids = drawn if rows is None else out.new_full((batch,), pad_token_id).index_copy_(0, rows, drawn)
        next_ids.masked_fill_(done, pad_token_id)
        out[:, t] = next_ids
        ended = ~done & (next_ids == eos_token_id)
        lengths.masked_fill_(ended, t + 1)
        done |= ended | (caps <= t + 1)  # a row whose budget is spent samples no more
        if bool(done.all()):
            out = out[:, : t + 1]
            break
        step_pos = step_pos + 1
        rows = _compact(decoder, rows, done, batch)
        live = slice(None) if rows is None else rows
        ids_t = next_ids[:, None] if rows is None else next_ids[rows, None]
        logits = decoder.step(ids_t, masks[live, : width + t + 1], step_pos[live]).float()
    return [row[:n] for row, n in zip(out.tolist(), lengths.tolist(), strict=True)]


# Dropping finished rows: only when at least this many rows go on and a quarter of the rows decoded now have finished
# (each drop copies the cache). A matrix product of fewer rows can round differently from the same rows inside a larger
# batch: on an AVX-512 CPU with one thread and the toy models' shapes, products of 16 rows or more agree with the full
# batch's, so the answers are the very ones decoding every row to the end gives. Elsewhere (AVX2, several threads, a
# Pythia's 2048-wide MLP, GPUs) the kept rows' logits can differ from the full batch's in the last bits (about 1e-7), so
# a token whose uniform lands that close to a boundary can differ; a rerun on the same machine is still bit-identical.
COMPACT_MIN_ROWS = 16


def _compact(decoder, rows, done: torch.Tensor, batch: int):
    """The rows to decode from now on: ``rows`` (None: all), or the unfinished ones when enough have finished."""
    select = getattr(decoder, "select_rows", None)
    if select is None:
        return rows
    running = batch if rows is None else rows.numel()
    unfinished = (~done).nonzero().squeeze(-1)
    if unfinished.numel() < COMPACT_MIN_ROWS or 4 * unfinished.numel() > 3 * running:
        return rows
    select(unfinished if rows is None else torch.searchsorted(rows, unfinished))
    return unfinished


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator, rows=None, batch=None) -> torch.Tensor:
    """One token per row of ``logits``; ``rows`` (of a batch of ``batch``): the rows ``logits`` are, which draw
    the random numbers those rows would draw in the whole batch."""
    if temperature <= 0:
        return logits.argmax(-1)
    if temperature != 1.0:  # dividing by 1 changes nothing
        logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return draw_categorical(logits.softmax(-1), generator, rows, batch)


def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None = None, rows: torch.Tensor | None = None,
                     batch: int | None = None) -> torch.Tensor:
    """One token per row of ``probs`` [B, V], drawn by inverting each row's cumulative distribution at one
    uniform number: an exact draw from the row's distribution (the sums in float64).

    ``torch.multinomial`` draws one exponential number per vocabulary entry (its Gumbel-style trick): at 256
    rows of 1024 tokens that is about a fifth of a toy decoding step; this draws one number per row. A token
    of probability zero (cut by top-p) is never drawn: the search lands on a token whose interval of the
    cumulative sum contains the uniform, and a draw that rounding sends elsewhere falls back to the last
    token with positive probability. ``rows``: ``probs`` are these rows of a batch of ``batch``; the uniforms of
    the whole batch are drawn (the generator moves on as it would) and these rows' used.
    """
    if rows is not None and batch is None:
        raise ValueError("draw_categorical: rows needs the whole batch's size (batch)")
    device = generator.device if generator is not None else probs.device  # e.g. a CPU generator for a GPU model
    cum = probs.to(device=device, dtype=torch.float64).cumsum(-1)
    total = cum[:, -1:]
    if not bool(((total > 0) & (total < float("inf"))).all()):  # NaN fails both comparisons
        raise RuntimeError("probability tensor contains inf, nan or a row without mass")
    u = torch.rand(probs.size(0) if rows is None else batch, 1, generator=generator, dtype=torch.float64, device=device)
    if rows is not None:
        u = u[rows.to(device)]
    drawn = torch.searchsorted(cum, u * total, right=True).clamp(max=probs.size(-1) - 1)
    # a zero-mass token owns an empty interval; should a parallel (GPU) sum round one open, or the uniform
    # round past the end, take the last token with mass instead
    p = probs.to(device)
    kept = p.gather(-1, drawn) > 0
    if not bool(kept.all()):
        last = probs.size(-1) - 1 - (p.flip(-1) > 0).int().argmax(-1, keepdim=True)
        drawn = torch.where(kept, drawn, last)
    return drawn.squeeze(-1).to(probs.device)


def decode_answers(tokenizer, answer_ids: list[list[int]]) -> tuple[list[str], list[bool]]:
    eos = tokenizer.eos_token_id
    finished = [bool(a) and a[-1] == eos for a in answer_ids]
    texts = tokenizer.batch_decode([a[:-1] if f else a for a, f in zip(answer_ids, finished, strict=True)], skip_special_tokens=True)
    return texts, finished


def generate_answers(
    model,
    tokenizer,
    instructions,
    inputs,
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    progress=None,
    **sampling,
) -> Samples:
    """Answers for many prompts, in batches; ``sampling`` goes to :func:`sample_ids`."""
    prompt_ids = encode_prompts(tokenizer, instructions, inputs)
    answer_ids: list[list[int]] = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start : start + batch_size]
        answer_ids += sample_ids(
            model, chunk, tokenizer.eos_token_id, tokenizer.pad_token_id, generator=generator, **sampling
        )
        if progress is not None:
            progress.update(len(chunk))
    texts, finished = decode_answers(tokenizer, answer_ids)
    return Samples(prompt_ids, answer_ids, texts, finished)

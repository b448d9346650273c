"""Tokenization and padding shared by the stages: prompts, prompt+answer pairs, batches."""

from __future__ import annotations

import torch

from rmopt.losses import IGNORE_INDEX
from rmopt.prompts import format_answer, format_prompt


def tokenize_sft(tokenizer, instructions, inputs, outputs, max_length: int) -> list[dict[str, list[int]]]:
    """Token ids and labels (-100 on the prompt) of each formatted example, in one tokenizer call each.

    The prompt ends with the special ``<|assistant|>`` token, so tokenizing the whole text splits at the
    same place as tokenizing the prompt alone; the prompt's length is where the answer starts.
    """
    prompts = [format_prompt(i, x) for i, x in zip(instructions, inputs, strict=True)]
    full = [p + format_answer(o) for p, o in zip(prompts, outputs, strict=True)]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    rows = []
    for p, ids in zip(prompt_ids, full_ids, strict=True):
        ids = ids[:max_length]
        labels = [IGNORE_INDEX] * min(len(p), len(ids)) + ids[len(p) :]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def pad(seqs: list[list[int]], value: int, side: str = "right") -> torch.Tensor:
    """Pad lists of ids to one tensor, on the right (training) or the left (generation)."""
    width = max(len(s) for s in seqs)
    if all(isinstance(s, list | tuple) for s in seqs):  # one tensor from padded lists: no per-row copies
        if side == "right":
            return torch.tensor([[*s, *[value] * (width - len(s))] for s in seqs], dtype=torch.long).reshape(len(seqs), width)
        return torch.tensor([[*[value] * (width - len(s)), *s] for s in seqs], dtype=torch.long).reshape(len(seqs), width)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            if side == "right":
                out[i, : len(s)] = torch.as_tensor(s)
            else:
                out[i, width - len(s) :] = torch.as_tensor(s)
    return out


def padding_mask(seqs, side: str = "right") -> torch.Tensor:
    """The attention mask of :func:`pad`'s batch: 1 on tokens, 0 on padding."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    positions = torch.arange(int(lengths.max()) if len(seqs) else 0)
    if side == "left":
        positions = positions.flip(0)
    return (positions < lengths[:, None]).long()


class SFTCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows):
        input_ids = pad([r["input_ids"] for r in rows], self.pad_token_id)
        labels = pad([r["labels"] for r in rows], IGNORE_INDEX)
        attention_mask = padding_mask([r["input_ids"] for r in rows])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

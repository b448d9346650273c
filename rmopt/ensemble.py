"""An ensemble of reward models that scores (prompt, answer) batches with every member at once.

Members are Hugging Face sequence-classification folders, found from a path with a ``{seed}``
placeholder and a list of seeds (``models/toy-rm_seed{seed}``, seeds 1..5). A folder whose head has
k outputs (a multi-head ensemble, ``ensemble=multihead``) counts as k members. The batch is
tokenized and padded once for all members; scores come back as a [k, B] tensor, members first, for
the objectives in :mod:`rmopt.objectives`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from rmopt.data.collate import pad
from rmopt.errors import RmoptError
from rmopt.models import position_ids_from_mask
from rmopt.packing import pack, packed_hidden_states, supports_packing
from rmopt.prompts import format_answer, format_prompt

STATS_FILE = "reward_stats.json"


def member_paths(path_pattern: str, seeds) -> list[str]:
    """Expand ``{seed}``; several seeds need the placeholder, and every member must exist."""
    seeds = list(seeds)
    if not seeds:
        raise RmoptError("seeds is empty; expected at least one seed, e.g. seeds=[1]")
    if "{seed}" not in path_pattern:
        if len(seeds) > 1:
            raise RmoptError(
                f"proxy_rm_path {path_pattern!r} has no {{seed}} placeholder but {len(seeds)} seeds were given; "
                f"use e.g. 'proxy_rm_path=\"{path_pattern}_seed{{seed}}\"'"
            )
        paths = [path_pattern]
    else:
        paths = [path_pattern.replace("{seed}", str(s)) for s in seeds]
    for p in paths:
        if not os.path.isdir(p):
            raise RmoptError(f"reward model {p!r} does not exist (from proxy_rm_path {path_pattern!r})")
    return paths


def tokenize_pairs(tokenizer, instructions, inputs, answers, max_length: int) -> list[list[int]]:
    """Prompt + answer + EOS in the prompt format, cut to ``max_length`` keeping the closing EOS."""
    texts = [format_prompt(i, x) + format_answer(a) for i, x, a in zip(instructions, inputs, answers, strict=True)]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [s if len(s) <= max_length else s[: max_length - 1] + [eos] for s in ids]


def last_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Score head read at the last non-padding token of each row: [B, num_labels].

    Positions skip left padding, so right- and left-padded rows score the same. GPT-NeoX models run on the
    real tokens only (:mod:`rmopt.packing`: no compute spent on padding); others on the padded batch.
    """
    packing = pack(attention_mask) if supports_packing(model) else None
    if packing is not None:
        return model.score(packed_hidden_states(model, input_ids, packing, keep=packing.last))
    out = model.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    hidden = out.last_hidden_state
    last = attention_mask.long().cumsum(-1).argmax(-1)  # index of the last 1 in each row
    pooled = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    return model.score(pooled)


class RewardEnsemble:
    """k reward models that share one tokenizer; ``score`` returns [k, B] float32 scores."""

    def __init__(self, models, tokenizer, stats=None, normalise: bool = False, max_length: int = 520, device="cpu"):
        self.models = [m.to(device).eval() for m in models]
        self.tokenizer, self.device, self.max_length = tokenizer, torch.device(device), max_length
        self.heads = [m.config.num_labels for m in self.models]
        self.stats = stats
        if normalise and (stats is None or any(s is None for s in stats)):
            raise RmoptError(f"normalise=true needs {STATS_FILE} in every member folder (written by rmopt-rm)")
        self.normalise = normalise

    @property
    def k(self) -> int:
        return sum(self.heads)

    @classmethod
    def load(cls, path_pattern: str, seeds, normalise: bool = False, max_length: int = 520, device="cpu", dtype=torch.float32):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from rmopt.models import check_special_tokens

        paths = member_paths(path_pattern, seeds)
        tokenizer = AutoTokenizer.from_pretrained(paths[0])
        check_special_tokens(tokenizer, f"tokenizer of {paths[0]!r}")
        models, stats = [], []
        for p in paths:
            models.append(AutoModelForSequenceClassification.from_pretrained(p, dtype=dtype))
            stats_file = Path(p) / STATS_FILE
            stats.append(json.loads(stats_file.read_text()) if stats_file.exists() else None)
        return cls(models, tokenizer, stats=stats, normalise=normalise, max_length=max_length, device=device)

    @torch.inference_mode()
    def score_ids(self, ids: list[list[int]]) -> torch.Tensor:
        input_ids = pad(ids, self.tokenizer.pad_token_id).to(self.device)
        attention_mask = pad([[1] * len(s) for s in ids], 0).to(self.device)
        scores = torch.cat([last_token_scores(m, input_ids, attention_mask).float().T for m in self.models])
        if self.normalise:
            means = torch.tensor([v for s in self.stats for v in _as_list(s["mean"])], device=scores.device)
            stds = torch.tensor([v for s in self.stats for v in _as_list(s["std"])], device=scores.device)
            scores = (scores - means[:, None]) / stds[:, None]
        return scores

    def score(self, instructions, inputs, answers, batch_size: int = 256, progress=None) -> torch.Tensor:
        """[k, B] scores of each answer to its prompt, in batches of ``batch_size``."""
        ids = tokenize_pairs(self.tokenizer, instructions, inputs, answers, self.max_length)
        # batches of similar lengths pad less: score in length order, then put the scores back in place
        order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
        chunks = []
        for start in range(0, len(ids), batch_size):
            chunk = [ids[j] for j in order[start : start + batch_size]]
            chunks.append(self.score_ids(chunk).cpu())
            if progress is not None:
                progress.update(len(chunk))
        if not chunks:
            return torch.zeros(self.k, 0)
        scores = torch.empty(self.k, len(ids), dtype=chunks[0].dtype)
        scores[:, torch.tensor(order)] = torch.cat(chunks, dim=1)
        return scores


def _as_list(v):
    return v if isinstance(v, list) else [v]

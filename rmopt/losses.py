"""Losses of the supervised stages, as pure functions of model outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy averaged over answer tokens only.

    ``labels`` holds token ids on answer tokens and ``IGNORE_INDEX`` on prompt and padding, aligned
    with the inputs (the shift happens here). Returns (mean loss, number of answer tokens).
    """
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))
    shift_labels = labels[:, 1:].reshape(-1)
    return answer_token_loss(shift_logits, shift_labels)


def answer_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``[M, vocab]`` logits against ``[M]`` next-token ids, summed over the targets that are
    not ``IGNORE_INDEX`` and divided by their number (1 if none). Returns (mean loss, number counted)."""
    n_tokens = (targets != IGNORE_INDEX).sum()
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / n_tokens.clamp(min=1), n_tokens


def reward_pair_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, l2_coef: float = 0.001
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry loss with a small L2 pull towards zero, per the released reward-model code.

    loss_i = -log sigmoid(r_c - r_r) + l2_coef * 0.5 * (r_c^2 + r_r^2); returns (mean loss, accuracy
    of each pair as 0/1 with ties counted as wrong).
    """
    margin = chosen.float() - rejected.float()
    loss = -F.logsigmoid(margin) + l2_coef * 0.5 * (chosen.float() ** 2 + rejected.float() ** 2)
    return loss.mean(), (margin > 0).float()

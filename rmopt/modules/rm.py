"""Reward-model training: one scalar (or k heads) at the last non-padding token, Bradley-Terry pair loss."""

from __future__ import annotations

import lightning as L
import torch
import torchmetrics

from rmopt.ensemble import last_token_scores
from rmopt.losses import reward_pair_loss
from rmopt.modules.common import ModelTrainingHooks, logs_this_step


def init_score_head(model, heads: int, seed: int, std: float = 0.02) -> None:
    """Give ``model`` a fresh linear head with ``heads`` outputs, N(0, std) from a generator seeded by ``seed``.

    The same seed gives the same head whatever else has drawn from the global RNG; bias (if any) is 0.
    """
    old = model.score
    if old.out_features != heads:
        model.score = torch.nn.Linear(old.in_features, heads, bias=old.bias is not None, dtype=old.weight.dtype)
        model.score.to(old.weight.device)
        model.config.num_labels = heads
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        weight = torch.empty(model.score.weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
        model.score.weight.copy_(weight)
        if model.score.bias is not None:
            model.score.bias.zero_()


def multi_head_pair_loss(scores: torch.Tensor, counts: torch.Tensor, l2_coef: float):
    """Sum over heads of each head's pair loss on its own resample.

    ``scores`` [2B, k] (chosen rows then rejected rows), ``counts`` [B, k] integer weights: head h's
    loss is :func:`reward_pair_loss` over its pairs repeated ``counts[:, h]`` times. Returns
    (summed loss, [k] per-head losses, [k] per-head accuracies).
    """
    b = counts.size(0)
    chosen, rejected = scores[:b], scores[b:]
    losses, accs = [], []
    for h in range(scores.size(1)):
        idx = torch.repeat_interleave(torch.arange(b, device=scores.device), counts[:, h].to(scores.device))
        if idx.numel() == 0:
            losses.append(scores.sum() * 0.0)
            accs.append(torch.tensor(float("nan"), device=scores.device))
            continue
        loss, acc = reward_pair_loss(chosen[idx, h], rejected[idx, h], l2_coef)
        losses.append(loss)
        accs.append(acc.mean())
    losses = torch.stack(losses)
    return losses.sum(), losses.detach(), torch.stack(accs)


class RewardModule(ModelTrainingHooks, L.LightningModule):
    def __init__(self, model, optimizer, warmup_steps: int = 0, l2_coef: float = 0.001):
        super().__init__()
        self.model = model
        self.optimizer_factory, self.warmup_steps, self.l2_coef = optimizer, warmup_steps, l2_coef
        self.heads = model.config.num_labels
        self.val_accuracy = torch.nn.ModuleList(torchmetrics.classification.BinaryAccuracy() for _ in range(self.heads))
        self.val_loss = torchmetrics.MeanMetric()
        self.history: list[dict[str, float]] = []

    def forward(self, input_ids, attention_mask):
        return last_token_scores(self.model, input_ids, attention_mask)

    def training_step(self, batch, batch_idx):
        scores = self(batch["input_ids"], batch["attention_mask"])
        loss, head_losses, head_accs = multi_head_pair_loss(scores, batch["counts"], self.l2_coef)
        if logs_this_step(self):
            b = batch["counts"].size(0)
            self.log("train/loss", loss, prog_bar=True, batch_size=b)
            self.log("train/accuracy", head_accs.nanmean(), batch_size=b)
        return loss

    def validation_step(self, batch, batch_idx):
        scores = self(batch["input_ids"], batch["attention_mask"])
        loss, _, _ = multi_head_pair_loss(scores, batch["counts"], self.l2_coef)
        b = batch["counts"].size(0)
        margin = scores[:b] - scores[b:]
        for h, metric in enumerate(self.val_accuracy):
            metric.update((margin[:, h] > 0).long(), torch.ones(b, dtype=torch.long, device=margin.device))
        self.val_loss.update(loss / self.heads, weight=b)

    def on_validation_epoch_end(self):
        accs = torch.stack([m.compute() for m in self.val_accuracy])
        loss = self.val_loss.compute()
        for m in self.val_accuracy:
            m.reset()
        self.val_loss.reset()
        self.log("val/accuracy", accs.mean(), prog_bar=True)
        self.log("val/loss", loss)
        if self.heads > 1:
            for h, a in enumerate(accs):
                self.log(f"val/accuracy_head{h}", a)
        if not self.trainer.sanity_checking and not any(h["step"] == self.global_step for h in self.history):
            self.history.append({"step": self.global_step, "val_accuracy": float(accs.mean()), "val_loss": float(loss)})

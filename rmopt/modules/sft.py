"""Supervised fine-tuning: next-token loss on answer tokens, validation loss and perplexity."""

from __future__ import annotations

import lightning as L
import torch
import torchmetrics

from rmopt.generation import generate_answers
from rmopt.losses import IGNORE_INDEX, answer_token_loss, sft_loss
from rmopt.modules.common import ModelTrainingHooks, log_samples, logs_this_step
from rmopt.packing import pack, packed_hidden_states, supports_packing


class SFTModule(ModelTrainingHooks, L.LightningModule):
    def __init__(self, model, tokenizer, optimizer, warmup_steps: int = 0, sample_prompts=None, sample_tokens: int = 48):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.optimizer_factory, self.warmup_steps = optimizer, warmup_steps
        self.sample_prompts, self.sample_tokens = sample_prompts, sample_tokens
        self.val_loss = torchmetrics.MeanMetric()
        self.history: list[dict[str, float]] = []

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    def loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean next-token loss over answer tokens, number of answer tokens), as :func:`sft_loss` gives them.

        When the model can run on packed real tokens (:mod:`rmopt.packing`) it computes only what the loss
        reads: each sequence without its last token through the model, and the LM head on the K positions
        whose next token is an answer token. Otherwise on the padded batch. Same loss either way."""
        input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        head = self.model.get_output_embeddings() if supports_packing(self.model) else None
        packing = pack(attention_mask, drop_last=True) if isinstance(head, torch.nn.Linear) else None
        if packing is None:
            return sft_loss(self(input_ids, attention_mask), labels)
        # the label each packed token predicts: the next token of its row (never past it: last tokens dropped)
        target = labels.reshape(-1)[packing.source + 1]
        keep = (target != IGNORE_INDEX).nonzero().squeeze(1)
        logits = head(packed_hidden_states(self.model, input_ids, packing, keep=keep))  # [K, vocab]
        return answer_token_loss(logits, target[keep])

    def training_step(self, batch, batch_idx):
        loss, n_tokens = self.loss(batch)
        if logs_this_step(self):
            self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].size(0))
            self.log("train/tokens", n_tokens.float(), reduce_fx="sum", batch_size=1)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, n_tokens = self.loss(batch)
        self.val_loss.update(loss, weight=n_tokens)  # token-weighted, so the epoch value is per token

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        if self.trainer.sanity_checking:  # Lightning drops what is logged here: the starting point goes out directly
            if self.global_step != 0 or self.history:
                return
            for logger in self.loggers:
                logger.log_metrics({"val/loss": float(loss), "val/perplexity": float(torch.exp(loss))}, step=0)
        else:
            self.log("val/loss", loss, prog_bar=True)
            self.log("val/perplexity", torch.exp(loss))
        if not any(h["step"] == self.global_step for h in self.history):
            self.history.append({"step": self.global_step, "val_loss": float(loss)})
            self._log_samples()

    def _log_samples(self):
        if self.sample_prompts is None or len(self.sample_prompts) == 0:
            return
        was_training = self.model.training
        self.model.eval()
        rows = self.sample_prompts
        samples = generate_answers(
            self.model, self.tokenizer, rows["instruction"], rows["input"], max_new_tokens=self.sample_tokens, temperature=1.0
        )
        self.model.train(was_training)
        log_samples(
            self,
            [{"instruction": i, "input": x, "answer": a} for i, x, a in zip(rows["instruction"], rows["input"], samples.texts, strict=True)],
        )

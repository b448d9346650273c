"""Preference pairs for reward-model training: chosen and rejected answers, tokenized as the ensemble scores them.

A batch of B pairs is one [2B, T] right-padded tensor (chosen rows first, then rejected rows), so a
single forward scores both. ``counts`` [B, k] says how often each pair appears in each member's (or
head's) bootstrap resample; without bootstrap it is all ones.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from rmopt.data.collate import pad, padding_mask
from rmopt.data.sources import PREFERENCE_COLUMNS, require_columns
from rmopt.ensemble import tokenize_pairs


def bootstrap_counts(n: int, heads: int, seed: int) -> np.ndarray:
    """[n, heads] counts: column h is how often each row is drawn in head h's resample of n with replacement."""
    rng = np.random.default_rng([int(seed), 0xB007])  # a stream of its own, apart from other uses of the seed
    return np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(heads)], axis=1)


def tokenize_preferences(dataset, tokenizer, max_length: int) -> list[dict]:
    """Chosen and rejected token ids of each pair (``preference`` = index of the chosen answer)."""
    answers, prefs = dataset["answers"], dataset["preference"]
    chosen = [a[int(p)] for a, p in zip(answers, prefs, strict=True)]
    rejected = [a[1 - int(p)] for a, p in zip(answers, prefs, strict=True)]
    instructions, inputs = dataset["instruction"], dataset["input"]
    chosen_ids = tokenize_pairs(tokenizer, instructions, inputs, chosen, max_length)
    rejected_ids = tokenize_pairs(tokenizer, instructions, inputs, rejected, max_length)
    return [{"chosen": c, "rejected": r} for c, r in zip(chosen_ids, rejected_ids, strict=True)]


class PairCollator:
    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows):
        seqs = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
        return {
            "input_ids": pad(seqs, self.pad_token_id),
            "attention_mask": padding_mask(seqs),
            "counts": torch.as_tensor(np.stack([r["counts"] for r in rows])),
        }


class PreferenceDataModule(L.LightningDataModule):
    """Train and held-out pairs of a source's ``preferences(split)``; data order and resamples follow ``seed``."""

    def __init__(
        self,
        source,
        tokenizer,
        batch_size: int = 32,
        max_length: int = 520,
        seed: int = 0,
        heads: int = 1,
        bootstrap: bool = False,
        train_split: str = "train",
        val_split: str = "validation",
        val_size: int | None = None,
    ):
        super().__init__()
        self.source, self.tokenizer = source, tokenizer
        self.batch_size, self.max_length, self.seed = batch_size, max_length, seed
        self.heads, self.bootstrap = heads, bootstrap
        self.train_split, self.val_split, self.val_size = train_split, val_split, val_size
        self.train_rows = self.val_rows = self.val_pairs = None

    def _pairs(self, split: str, limit: int | None = None):
        ds = self.source.preferences(split)
        require_columns(ds, PREFERENCE_COLUMNS, f"{getattr(self.source, 'path', '')}:{split}")
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
        return ds

    def setup(self, stage: str | None = None):
        if self.train_rows is not None:
            return
        train = self._pairs(self.train_split)
        rows = tokenize_preferences(train, self.tokenizer, self.max_length)
        if self.bootstrap:
            counts = bootstrap_counts(len(rows), self.heads, self.seed)
        else:
            counts = np.ones((len(rows), self.heads), dtype=np.int64)
        # rows no head drew are skipped: they would add nothing to any loss
        self.train_rows = [{**r, "counts": c} for r, c in zip(rows, counts, strict=True) if c.sum() > 0]
        self.val_pairs = self._pairs(self.val_split, self.val_size)
        self.val_rows = [
            {**r, "counts": np.ones(self.heads, dtype=np.int64)}
            for r in tokenize_preferences(self.val_pairs, self.tokenizer, self.max_length)
        ]

    def train_dataloader(self):
        from rmopt.data.sampler import train_loader

        return train_loader(self, self.train_rows, self.batch_size, int(self.seed), PairCollator(self.tokenizer.pad_token_id))

    def val_dataloader(self):
        return DataLoader(self.val_rows, batch_size=self.batch_size, collate_fn=PairCollator(self.tokenizer.pad_token_id))

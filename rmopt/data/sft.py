"""The SFT data module: instruction splits in the prompt format, loss only on answers."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from rmopt.data.collate import SFTCollator, tokenize_sft
from rmopt.data.sources import INSTRUCTION_COLUMNS, require_columns


class SFTDataModule(L.LightningDataModule):
    def __init__(
        self,
        source,
        tokenizer,
        train_split: str = "sft",
        val_split: str = "val",
        batch_size: int = 32,
        max_length: int = 520,
        val_size: int | None = 512,
        seed: int = 0,
    ):
        super().__init__()
        self.source, self.tokenizer = source, tokenizer
        self.train_split, self.val_split = train_split, val_split
        self.batch_size, self.max_length, self.val_size, self.seed = batch_size, max_length, val_size, seed
        self.train_rows = self.val_rows = None

    def _rows(self, split: str, limit: int | None = None):
        ds = self.source.instructions(split)
        require_columns(ds, INSTRUCTION_COLUMNS, f"{type(self.source).__name__}:{split}")
        if limit is not None and len(ds) > limit:
            ds = ds.select(range(limit))
        return tokenize_sft(self.tokenizer, ds["instruction"], ds["input"], ds["output"], self.max_length)

    def setup(self, stage: str | None = None):
        if self.train_rows is None:
            self.train_rows = self._rows(self.train_split)
            self.val_rows = self._rows(self.val_split, self.val_size)

    def val_prompts(self, n: int):
        ds = self.source.instructions(self.val_split)
        return ds.select(range(min(n, len(ds))))

    def train_dataloader(self):
        from rmopt.data.sampler import train_loader

        return train_loader(self, self.train_rows, self.batch_size, self.seed, SFTCollator(self.tokenizer.pad_token_id))

    def val_dataloader(self):
        return DataLoader(self.val_rows, batch_size=self.batch_size, collate_fn=SFTCollator(self.tokenizer.pad_token_id))

"""A shuffle that resumes mid-epoch: the order is a function of (seed, epoch) only.

Lightning restarts the epoch's iterator from its first batch after a mid-epoch resume (a plain
DataLoader has no state), and a DataLoader's shuffle generator is re-seeded when the loader is
rebuilt, so a resumed run would see different batches than an uninterrupted one.
:class:`ResumableSampler` instead asks, when an iteration begins, how many batches training has
consumed so far (``consumed()``, the trainer's step count), derives the epoch and the position in
it, and skips the batches already done.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(
        self, n: int, batch_size: int, seed: int, drop_last: bool, consumed: Callable[[], int] = lambda: 0
    ):
        self.n, self.batch_size, self.seed, self.drop_last = (
            int(n),
            int(batch_size),
            int(seed),
            bool(drop_last),
        )
        self.consumed = consumed

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return max(1, full if self.drop_last or not rest else full + 1)

    def order(self, epoch: int) -> list[int]:
        """The epoch's permutation: the same (seed, epoch) always gives the same order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        return torch.randperm(self.n, generator=generator).tolist()

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        epoch, position = divmod(int(self.consumed()), self.batches_per_epoch)
        yield from self.order(epoch)[position * self.batch_size :]


def train_loader(module, rows, batch_size: int, seed: int, collate_fn):
    """The train DataLoader of a data module: resumable shuffle on one device, a seeded shuffle under ddp
    (where Lightning shards the sampler itself)."""
    from torch.utils.data import DataLoader

    drop_last = len(rows) >= batch_size
    trainer = getattr(module, "trainer", None)
    if trainer is not None and trainer.world_size > 1:
        generator = torch.Generator().manual_seed(int(seed))
        return DataLoader(
            rows,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=collate_fn,
            drop_last=drop_last,
        )

    def consumed() -> int:
        t = getattr(module, "trainer", None)
        return 0 if t is None else int(t.global_step) * int(t.accumulate_grad_batches)

    sampler = ResumableSampler(len(rows), batch_size, seed, drop_last, consumed)
    return DataLoader(
        rows, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last
    )

"""A shuffle that resumes mid-epoch: the order is a function of (seed, epoch) only.

Lightning restarts the epoch's iterator from its first batch after a mid-epoch resume (a plain
DataLoader has no state), and a DataLoader's shuffle generator is re-seeded when the loader is
rebuilt, so a resumed run would see different batches than an uninterrupted one.
:class:`ResumableSampler` instead asks, when an iteration begins, how many batches training has
consumed so far (``consumed()``, the trainer's step count), derives the epoch and the position in
it, and skips the batches already done. Under distributed strategies (ddp, FSDP, DeepSpeed) it also
shards each epoch's order over the processes itself, as ``DistributedSampler`` does, so Lightning
keeps it rather than wrapping it in a sampler that cannot skip.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DistributedSampler


class ResumableSampler(DistributedSampler):
    """Indices of ``n`` rows for process ``rank`` of ``num_replicas``: each epoch a seeded permutation (padded
    by its own start to a multiple of ``num_replicas``, then every ``num_replicas``-th index from ``rank``),
    from the batch that ``consumed()`` says comes next."""

    def __init__(
        self, n: int, batch_size: int, seed: int, drop_last: bool, consumed: Callable[[], int] = lambda: 0,
        num_replicas: int = 1, rank: int = 0,
    ):  # DistributedSampler's __init__ wants a dataset and an initialised process group: not called
        self.n, self.batch_size, self.seed, self.drop_last = (
            int(n),
            int(batch_size),
            int(seed),
            bool(drop_last),
        )
        self.num_replicas, self.rank, self.epoch, self.shuffle = int(num_replicas), int(rank), 0, True
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.num_samples = -(-self.n // self.num_replicas)  # per process
        self.total_size = self.num_samples * self.num_replicas
        self.consumed = consumed

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return max(1, full if self.drop_last or not rest else full + 1)

    def order(self, epoch: int) -> list[int]:
        """This process's share of the epoch's permutation: the same (seed, epoch) always gives the same order."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(epoch))
        order = torch.randperm(self.n, generator=generator).tolist()
        if self.num_replicas == 1:
            return order
        order += order[: self.total_size - self.n]  # every process gets as many rows (as DistributedSampler)
        return order[self.rank : self.total_size : self.num_replicas]

    def set_epoch(self, epoch: int) -> None:  # the epoch comes from consumed(); Lightning's call is kept only
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        epoch, position = divmod(int(self.consumed()), self.batches_per_epoch)
        yield from self.order(epoch)[position * self.batch_size :]


def train_loader(module, rows, batch_size: int, seed: int, collate_fn):
    """The train DataLoader of a data module: a resumable shuffle, this process's share of it under
    distributed strategies."""
    from torch.utils.data import DataLoader

    trainer = getattr(module, "trainer", None)
    world, rank = (int(trainer.world_size), int(trainer.global_rank)) if trainer is not None else (1, 0)
    drop_last = -(-len(rows) // world) >= batch_size

    def consumed() -> int:
        t = getattr(module, "trainer", None)
        return 0 if t is None else int(t.global_step) * int(t.accumulate_grad_batches)

    sampler = ResumableSampler(len(rows), batch_size, seed, drop_last, consumed, num_replicas=world, rank=rank)
    return DataLoader(
        rows, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last
    )

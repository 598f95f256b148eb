"""Training order and augmentation as functions of (seed, epoch), so that a resumed run repeats them exactly.

PyTorch's shuffling and the random crops and flips draw from process-wide generators whose state is not in
a checkpoint: after a restart they would differ from the uninterrupted run. Here the order of epoch e is a
permutation drawn from (seed, e), and every sample's augmentation from (seed, e, index), whatever the number
of worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EpochSeededSampler(DistributedSampler):
    """Yields `(index, sample_seed)`: a permutation drawn from (seed, epoch), this rank's share of it.

    A `DistributedSampler` (with one replica on a single device), so Lightning calls `set_epoch` every epoch and
    leaves it in place under DDP. `resume_from(epoch, batches)` skips the batches of `epoch` that a run
    interrupted mid-epoch had already trained on, so that it continues with the next one.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches_done: int) -> None:
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())  # seeded with seed + epoch, sharded by rank
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size:]
        return iter([(index, mix_seed(self.seed, self.epoch, index)) for index in indices])


class SeededSamples(Dataset):
    """Applies the wrapped dataset's random transforms under the sample's own seed, from `EpochSeededSampler`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, seeded: tuple[int, int]):
        index, seed = seeded
        # fork_rng: the process's own generator (dropout, when loading in the main process) is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]

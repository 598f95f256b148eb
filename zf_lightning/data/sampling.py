"""Training order and augmentation as functions of (seed, epoch), so that a resumed run repeats them exactly.

PyTorch's shuffling and the random crops and flips draw from process-wide generators whose state is not in
a checkpoint: after a restart they would differ from the uninterrupted run. Here the order of epoch e is a
permutation drawn from (seed, e), and every sample's augmentation from (seed, e, index), whatever the number
of worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import cast

import torch
from torch.utils.data import Dataset, DistributedSampler

from zf_lightning.utils.seeding import mix_seed


class EpochSeededSampler(DistributedSampler):
    """Yields `(index, seed, epoch)`: a permutation drawn from (seed, epoch), this rank's share of it. The sample's
    own seed is mixed where it is loaded (a DataLoader worker), not in the training process.

    A `DistributedSampler` (with one replica on a single device), so Lightning calls `set_epoch` every epoch and
    leaves it in place under DDP. `resume_from(epoch, batches)` starts at `epoch` and skips the batches of it
    that a run interrupted mid-epoch had already trained on, so that it continues with the next one.

    The order is drawn when an iterator is made. A DataLoader with workers makes it (and draws its first indices)
    as soon as it is iterated, which Lightning does before it calls `set_epoch` when a run resumes: so the epoch
    must be right from the start (`resume_from`). An iterator asked for more indices after the epoch changed
    under it raises, rather than train one epoch on another epoch's order.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    @property
    def num_batches(self) -> int:
        """Batches of this rank in one epoch (the loader keeps a last, smaller batch)."""
        return -(-self.num_samples // self.batch_size)

    def resume_from(self, epoch: int, batches_done: int) -> None:
        self.set_epoch(epoch)
        self._resume = (epoch, batches_done)

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        indices = list(super().__iter__())  # seeded with seed + epoch, sharded by rank
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size :]
            self._resume = None  # once: the same epoch started again (another fit) is a whole epoch
        return self._keys(indices, self.epoch)

    def _keys(self, indices: list[int], epoch: int) -> Iterator[tuple[int, int, int]]:
        for index in indices:
            if self.epoch != epoch:
                raise RuntimeError(
                    f"the training loader is drawing the order of epoch {epoch + 1} (1-based) but epoch "
                    f"{self.epoch + 1} is training: the sampler's epoch was set after its iterator was made"
                )
            yield index, self.seed, epoch


class SeededSamples(Dataset):
    """Applies the wrapped dataset's random transforms under the sample's own seed, from `EpochSeededSampler`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # a map-style dataset

    def __getitem__(self, key: tuple[int, int, int]):
        index, seed, epoch = key
        # fork_rng: the process's own generator (dropout, when loading in the main process) is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(mix_seed(seed, epoch, index))  # not torch.manual_seed: no CUDA queueing
            return self.dataset[index]

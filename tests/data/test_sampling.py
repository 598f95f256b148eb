"""The training sampler's resume: where a resumed run continues, what it refuses, and its guard against an order
drawn for another epoch (what a loader with workers did before Lightning set the epoch on a resume)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from zf_lightning.data.base import resume_point
from zf_lightning.data.sampling import EpochSeededSampler, SeededSamples

DATA = TensorDataset(torch.arange(200))


def sampler(batch_size: int = 20, dataset=DATA, world_size: int = 1) -> EpochSeededSampler:
    return EpochSeededSampler(dataset, batch_size=batch_size, num_replicas=world_size, rank=0, seed=7)


def position(epoch: int, done: int, **loader) -> dict:
    return {
        "epoch": epoch,
        "batches_done": done,
        "batches_per_epoch": 10,
        "batch_size": 20,
        "world_size": 1,
        "dataset_size": 200,
        **loader,
    }


def test_a_position_inside_an_epoch_continues_with_its_next_batch_and_one_at_its_end_with_the_next_epoch():
    assert resume_point(position(1, 4), sampler()) == (1, 4)
    assert resume_point(position(1, 10), sampler()) == (2, 0)
    assert resume_point(position(1, 0), sampler(batch_size=10)) == (1, 0)  # nothing done yet: any loader fits
    assert resume_point(position(1, 10), sampler(batch_size=10)) == (2, 0)  # an epoch boundary: any loader fits


@pytest.mark.parametrize(
    ("now", "named"),
    [
        ({"batch_size": 10}, "batch_size 20 then, 10 now"),
        ({"world_size": 2}, "world_size 1 then, 2 now"),
        ({"dataset": TensorDataset(torch.arange(180))}, "dataset_size 200 then, 180 now"),
    ],
)
def test_a_mid_epoch_position_from_another_loader_is_refused_naming_what_differs(now, named):
    with pytest.raises(ValueError, match=rf"inside epoch 2 \(1-based\) after batch 4.*{named}"):
        resume_point(position(1, 4), sampler(**now))


def test_a_position_that_leaves_no_batch_to_train_is_refused():
    old_format = {"epoch": 1, "batches_done": 12}  # no loader sizes recorded
    with pytest.raises(ValueError, match=r"has only 10 batches: it would train no batch of epoch 2"):
        resume_point(old_format, sampler())


def test_resume_from_starts_at_the_epoch_and_skips_the_batches_done_once():
    reference = sampler()
    reference.set_epoch(3)
    whole = [key for key in reference]
    resumed = sampler()
    resumed.resume_from(3, 4)
    assert resumed.epoch == 3  # set before any iterator exists: a loader with workers draws at once
    assert [key for key in resumed] == whole[4 * 20 :]
    assert [key for key in resumed] == whole  # the same epoch again is a whole epoch


def test_an_order_drawn_for_another_epoch_raises_instead_of_training_on_it():
    keys = sampler()
    loader = DataLoader(SeededSamples(DATA), sampler=keys, batch_size=20)
    iterator = iter(loader)
    next(iterator)  # epoch 0's order is being drawn (a worker would have drawn it at iter())
    keys.set_epoch(1)
    with pytest.raises(RuntimeError, match=r"drawing the order of epoch 1 \(1-based\) but epoch 2 is training"):
        next(iterator)
    assert len(list(iter(loader))) == 10  # a new iterator draws epoch 1's order

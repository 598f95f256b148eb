"""The paper's Caltech protocol: N random training images per class, the rest (capped) for testing, 5 seeds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zf_lightning.utils.errors import InputError
from zf_lightning.utils.validation import check_int


@dataclass(frozen=True, eq=False)  # eq=False: == on arrays is elementwise; compare with np.array_equal
class Split:
    """Sorted dataset indices (int64, read-only) of the training and the test images."""

    train: np.ndarray
    test: np.ndarray


def per_class_split(
    targets: Sequence[int], train_per_class: int, seed: int, max_test_per_class: int | None = None
) -> Split:
    """`train_per_class` random images of every class for training, the next up to `max_test_per_class`
    (all the rest when None) for testing.

    Each class is shuffled by its own generator, ``np.random.default_rng([seed, class_index])``, so a
    class's split depends only on the seed, the class index and that class's images (in dataset order):
    adding or removing other classes leaves it unchanged, and numpy's PCG64 makes it the same on every machine.
    """
    check_int(train_per_class, "train_per_class", 1)
    check_int(seed, "seed", 0)
    if max_test_per_class is not None:
        check_int(max_test_per_class, "max_test_per_class", 1)
    labels = np.asarray(targets)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InputError(
            "targets must be a non-empty 1-D sequence of class indices >= 0, "
            f"got {labels.dtype} of shape {labels.shape}"
        )
    classes, counts = np.unique(labels, return_counts=True)
    too_small = [f"class {c} has {n}" for c, n in zip(classes, counts) if n < train_per_class + 1]
    if too_small:
        raise InputError(
            f"train_per_class={train_per_class} needs at least {train_per_class + 1} images per class "
            f"(one left for testing): {'; '.join(too_small)}"
        )
    train, test = [], []
    for c in classes:
        members = np.flatnonzero(labels == c)  # ascending dataset order
        shuffled = members[np.random.default_rng([seed, int(c)]).permutation(len(members))]
        train.append(shuffled[:train_per_class])
        rest = shuffled[train_per_class:]
        test.append(rest if max_test_per_class is None else rest[:max_test_per_class])
    return Split(train=_frozen(train), test=_frozen(test))


def _frozen(parts: list[np.ndarray]) -> np.ndarray:
    indices = np.sort(np.concatenate(parts)).astype(np.int64)
    indices.setflags(write=False)  # Split is frozen: its arrays should not change under it either
    return indices

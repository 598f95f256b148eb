"""What the benchmark scripts share: the machine's load, number lists, and pre-built batches.

Scripts run as `python bench/<name>.py`, so `bench/` is on the path: `from _common import ...`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: printed before and after, since other processes skew timings."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def fmt(values, spec: str = ".1f") -> str:
    return ", ".join(format(v, spec) for v in values)


class Batches:
    """An iterable over pre-built batches (a plain list would read as several dataloaders to Lightning)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def full_batches(loader: Callable[[], Iterable], batch_size: int, count: int, what: str) -> list:
    """`count` full batches from `loader()`, going round again (new draws) when one pass has too few."""
    batches: list = []
    while len(batches) < count:
        before = len(batches)
        for images, labels in loader():
            if len(labels) == batch_size and len(batches) < count:
                batches.append((images.contiguous(), labels))
        if len(batches) == before:
            raise SystemExit(f"the {what} set has fewer images than one batch of {batch_size}")
    return batches

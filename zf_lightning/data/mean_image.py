"""The per-pixel mean image of a training set (paper, section 3), computed once and cached on disk."""

from __future__ import annotations

import hashlib
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_torch_save
from zf_lightning.utils.progress import track


def cache_path(cache_dir: str | Path, key: str) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"mean_image-{digest}.pt"


def compute_mean_image(
    dataset: Dataset, max_images: int | None = None, seed: int = 0, batch_size: int = 64, num_workers: int = 0
) -> torch.Tensor:
    """Average of `dataset`'s images, pixel by pixel, in float64; `dataset` must yield equal-size tensors.

    With `max_images`, the average is over a seeded random subset of that many images.
    """
    if max_images is not None and max_images < len(cast(Sized, dataset)):  # a map-style dataset
        generator = torch.Generator().manual_seed(seed)
        dataset = Subset(dataset, torch.randperm(len(cast(Sized, dataset)), generator=generator)[:max_images].tolist())
    # Its own generator: iterating a DataLoader otherwise draws a seed from the global RNG, and a cold
    # cache would then train differently from a warm one.
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator())
    total: torch.Tensor | None = None
    count = 0
    for images, _ in track(loader, description="Computing the mean image"):
        batch_sum = images.double().sum(dim=0)
        total = batch_sum if total is None else total + batch_sum
        count += len(images)
    if count == 0:
        raise InputError("cannot compute a mean image of an empty training set")
    assert total is not None  # set by the first batch
    return (total / count).float()


def load_or_compute_mean_image(key: str, dataset: Dataset, cache_dir: str | Path, **options: Any) -> torch.Tensor:
    """The cached mean image for `key`, computing and caching it the first time."""
    path = cache_path(cache_dir, key)
    if path.exists():
        try:
            cached = torch.load(path, weights_only=True)
            if cached.get("key") == key:
                return cached["mean_image"]
        except Exception:  # a corrupt cache is recomputed, never trusted
            pass
    mean_image = compute_mean_image(dataset, **options)
    atomic_torch_save({"key": key, "mean_image": mean_image}, path)
    return mean_image

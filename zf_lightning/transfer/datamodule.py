"""The transfer datasets as datamodules: Caltech-101/256 with the paper's per-class splits, VOC 2012."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch.utils.data import Dataset

from zf_lightning.data.base import ImageClassificationDataModule
from zf_lightning.data.image_files import (
    BadImageLog,
    ReadableSubset,
    check_on_bad_image,
)
from zf_lightning.utils.errors import InputError

if TYPE_CHECKING:
    from zf_lightning.transfer.splits import Split

CALTECH = ("caltech101", "caltech256")
DATASETS = (*CALTECH, "voc2012")


class _ClassFolders(Protocol):
    """A Caltech dataset (a torchvision ImageFolder) beyond `Dataset`: its class names and each image's label."""

    classes: list[str]
    targets: Sequence[int]


def mean_image_from_checkpoint(path: str | Path) -> torch.Tensor:
    """The mean image a zf-train checkpoint was trained with (stored under its datamodule's name)."""
    from zf_lightning.utils.io import load_checkpoint

    checkpoint = load_checkpoint(path, "data.mean_image_checkpoint")
    found = [value["mean_image"] for value in checkpoint.values() if isinstance(value, dict) and "mean_image" in value]
    if not found:
        raise InputError(f"checkpoint {path} holds no mean image (trained with data.preset=torchvision?)")
    return found[0]


class TransferDataModule(ImageClassificationDataModule):
    """Caltech-101, Caltech-256 (`train_per_class` images per class to train, the rest to test, split by
    `split_seed`) or PASCAL VOC 2012 (train on `train`, test on `val`: the test labels are not public).

    There is no validation set in the paper's protocols: "val" is the test split, so the curves in W&B show
    test accuracy over epochs; the transfer experiments select nothing on it (no plateau schedule, the last
    checkpoint is tested).

    Args:
        dataset: "caltech101", "caltech256" or "voc2012".
        root: the folder that holds `caltech101/`, `caltech256/` or `VOCdevkit/`.
        train_per_class: N of the Caltech protocols (15, 30, ... images per class).
        split_seed: which of the seeded random splits (the paper averages 5).
        max_test_per_class: Caltech-101 tests on at most 50 images per class; None: all the rest.
        mean_image_checkpoint: take the mean image from this checkpoint (a pretrained network must see
            inputs normalised as in its training); None: computed from this training split.
        on_bad_image: "skip" (an unreadable image is replaced by the next readable one of its split, with a
            warning) or "error" (fail naming the file).
        bad_image_log: the .jsonl file listing skipped, converted and smaller-than-the-crop images (None:
            warnings only). See `zf_lightning.data.image_files`.
    """

    def __init__(
        self,
        dataset: str,
        root: str | Path,
        num_classes: int,
        train_per_class: int = 30,
        split_seed: int = 0,
        max_test_per_class: int | None = None,
        mean_image_checkpoint: str | Path | None = None,
        on_bad_image: str = "skip",
        bad_image_log: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        if dataset not in DATASETS:
            raise InputError(f"data.dataset must be one of {list(DATASETS)}, got {dataset!r}")
        super().__init__(num_classes=num_classes, **kwargs)
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_image_log = Path(bad_image_log).expanduser() if bad_image_log else None
        self.dataset, self.root = dataset, Path(root).expanduser()
        self.train_per_class, self.split_seed, self.max_test_per_class = train_per_class, split_seed, max_test_per_class
        if mean_image_checkpoint:
            from zf_lightning.utils.io import check_checkpoint

            check_checkpoint(mean_image_checkpoint, "data.mean_image_checkpoint")
        self.mean_image_checkpoint = mean_image_checkpoint
        self.stage_splits = {"train": "train", "val": "test", "test": "test"}
        self._split: Split | None = None
        full = self._full_dataset(None)  # checks the layout and class count now, before any training work
        if dataset in CALTECH:
            self._split = self._make_split(full)

    def _bad_images(self) -> dict[str, Any]:
        return {
            "on_bad_image": self.on_bad_image,
            "bad_image_log": BadImageLog(self.bad_image_log),
            "min_size": self.crop_size,
        }

    def _full_dataset(self, transform: Callable[[Any], Any] | None) -> Dataset:
        from zf_lightning.transfer.datasets import dataset_by_name

        if self.dataset == "voc2012":
            return dataset_by_name(self.dataset, self.root, split="train", transform=transform, **self._bad_images())
        dataset = dataset_by_name(self.dataset, self.root, transform=transform, **self._bad_images())
        classes = cast(_ClassFolders, dataset).classes
        if len(classes) != self.num_classes:
            raise InputError(
                f"{self.dataset} at {self.root} has {len(classes)} classes but data.num_classes={self.num_classes}"
            )
        return dataset

    def _make_split(self, full: Dataset) -> Split:
        from zf_lightning.transfer.splits import per_class_split

        targets = cast(_ClassFolders, full).targets
        return per_class_split(targets, self.train_per_class, self.split_seed, self.max_test_per_class)

    def dataset_key(self) -> str:
        split = (
            f"|train_per_class={self.train_per_class}|split_seed={self.split_seed}" if self.dataset in CALTECH else ""
        )
        return f"{self.dataset}|root={self.root.resolve()}{split}"

    def load_mean_image(self) -> torch.Tensor:
        if self.mean_image is None and self.mean_image_checkpoint:
            mean_image = mean_image_from_checkpoint(self.mean_image_checkpoint)
            self.load_state_dict({"mean_image": mean_image})  # checks its size against data.resize_size
        return super().load_mean_image()

    def make_dataset(self, split: str, transform: Callable[[Any], Any] | None) -> Dataset:
        from zf_lightning.transfer.datasets import dataset_by_name

        if self.dataset == "voc2012":
            return dataset_by_name(
                self.dataset,
                self.root,
                split="train" if split == "train" else "val",
                transform=transform,
                **self._bad_images(),
            )
        assert self._split is not None  # made in __init__ for the Caltech sets
        indices = self._split.train if split == "train" else self._split.test
        # Substitutes for skipped images come from the same split: a test image never stands in for a training one.
        return ReadableSubset(
            dataset_by_name(self.dataset, self.root, transform=transform, **self._bad_images()), indices.tolist()
        )

    def split_sizes(self) -> dict[str, int]:
        if self._split is None:
            return {split: len(cast(Sized, self.make_dataset(split, None))) for split in ("train", "test")}
        return {"train": len(self._split.train), "test": len(self._split.test)}

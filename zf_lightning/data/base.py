"""What every image-classification datamodule shares: presets, the mean image, global batch size, loaders."""

from __future__ import annotations

import logging
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from zf_lightning.data.mean_image import load_or_compute_mean_image
from zf_lightning.data.sampling import EpochSeededSampler, SeededSamples
from zf_lightning.data.transforms import (
    PRESETS,
    TRAIN_CROPS,
    paper_base,
    paper_transforms,
    torchvision_transforms,
)
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import default_cache_dir

STAGE_SPLITS = {"train": "train", "val": "val", "test": "val"}
log = logging.getLogger(__name__)


def resume_point(position: dict, sampler: EpochSeededSampler) -> tuple[int, int]:
    """(epoch, batches to skip) at which a run resumed from a checkpoint's `train_position` continues.

    A position at the end of an epoch continues with the next epoch. A position inside an epoch needs the loader
    it was counted in: another batch size, world size or dataset would continue with other samples than the
    uninterrupted run, so it is refused, naming what differs. So is a position that leaves no batch to train.
    """
    epoch, done = int(position["epoch"]), int(position["batches_done"])
    if done == position.get("batches_per_epoch", sampler.num_batches):
        return epoch + 1, 0
    if done == 0:
        return epoch, 0
    now = {
        "batch_size": sampler.batch_size,
        "world_size": sampler.num_replicas,
        "dataset_size": len(cast(Sized, sampler.dataset)),  # map-style datasets have a length
    }
    differs = [
        f"{key} {position[key]} then, {value} now"
        for key, value in now.items()
        if key in position and position[key] != value
    ]
    where = f"the checkpoint stopped inside epoch {epoch + 1} (1-based) after batch {done}"
    if differs:
        raise InputError(
            f"{where}, in a training loader that differs from this run's ({'; '.join(differs)}; batch_size is per "
            "device): continuing there would train other samples than the interrupted run. Resume with the same "
            "data.batch_size, trainer.devices/num_nodes and data, or from an end-of-epoch checkpoint "
            "(checkpoints/epochNNN.ckpt)"
        )
    if done > sampler.num_batches:
        raise InputError(
            f"{where}, but this run's epoch has only {sampler.num_batches} batches: it would train no batch of "
            f"epoch {epoch + 1}"
        )
    return epoch, done


class ImageClassificationDataModule(L.LightningDataModule, ABC):
    """Base datamodule; subclasses say how to build a split (`make_dataset`) and name their training set.

    Args:
        num_classes: number of classes the data must have.
        batch_size: the global batch size (the paper's 128), split evenly over devices.
        preset: "paper" (short side `resize_size`, centre crop, mean image subtracted on the 0-255 scale,
            random `crop_size` crops and flips) or "torchvision" (random resized crops, mean/std).
        ten_crop_test: test on the 4 corner and centre crops and their flips, averaging predictions.
        train_crops: the paper preset's training crops: "random" (any `crop_size` window, flipped or not) or "ten"
            (one of the 10 test crops, drawn per sample and epoch under the sample's seed as the random ones are).
        mean_image_max_images: estimate the mean image from a seeded random subset of this size (None: all).
        cache_dir: where the mean image and file lists are cached (default `$ZF_CACHE_DIR` or ~/.cache/zf_lightning).
    """

    stage_splits = STAGE_SPLITS

    def __init__(
        self,
        num_classes: int,
        batch_size: int = 128,
        num_workers: int = 2,
        preset: str = "paper",
        resize_size: int = 256,
        crop_size: int = 224,
        ten_crop_test: bool = True,
        mean_image_max_images: int | None = None,
        cache_dir: str | Path | None = None,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        train_crops: str = "random",
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise InputError(f"data.preset must be one of {list(PRESETS)}, got {preset!r}")
        if train_crops not in TRAIN_CROPS:
            raise InputError(f"data.train_crops must be one of {list(TRAIN_CROPS)}, got {train_crops!r}")
        if train_crops != "random" and preset != "paper":
            raise InputError(
                f"data.train_crops={train_crops} is the paper preset's; data.preset={preset} trains on random resized "
                "crops"
            )
        if crop_size > resize_size:
            raise InputError(f"data.crop_size ({crop_size}) must not exceed data.resize_size ({resize_size})")
        if batch_size < 1:
            raise InputError(f"data.batch_size must be >= 1, got {batch_size}")
        self.num_classes, self.batch_size, self.num_workers = num_classes, batch_size, num_workers
        self.preset, self.resize_size, self.crop_size, self.ten_crop_test = (
            preset,
            resize_size,
            crop_size,
            ten_crop_test,
        )
        self.train_crops = train_crops
        self.mean_image_max_images = mean_image_max_images
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.pin_memory, self.persistent_workers = pin_memory, persistent_workers
        self.datasets: dict[str, Dataset] = {}
        self.mean_image: torch.Tensor | None = None
        self.train_sampler: EpochSeededSampler | None = None
        self._resume_position: dict | None = None

    @abstractmethod
    def make_dataset(self, split: str, transform: Callable[[Any], Any] | None) -> Dataset:
        """The dataset of `split`, yielding (image as PIL or uint8 tensor, label) through `transform`."""

    @abstractmethod
    def dataset_key(self) -> str:
        """A string that identifies the training images, so that cached statistics are never mixed up."""

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise InputError(f"data.batch_size={self.batch_size} (global) does not divide across {world_size} devices")
        return self.batch_size // world_size

    def load_mean_image(self) -> torch.Tensor:
        if self.mean_image is None:
            key = f"{self.dataset_key()}|resize={self.resize_size}|max_images={self.mean_image_max_images}"
            train_images = self.make_dataset("train", paper_base(self.resize_size))
            self.mean_image = load_or_compute_mean_image(
                key, train_images, self.cache_dir, max_images=self.mean_image_max_images, num_workers=self.num_workers
            )
        return self.mean_image

    def state_dict(self) -> dict:
        # Saved in checkpoints: the mean image is part of the model's input normalisation; the position in the
        # training epoch (and the loader it was counted in) lets a run stopped mid-epoch continue with the next batch.
        state: dict[str, Any] = {"mean_image": self.mean_image} if self.mean_image is not None else {}
        if self.train_sampler is not None and self.trainer is not None:
            sampler = self.train_sampler
            state["train_position"] = {
                "epoch": sampler.epoch,
                # Lightning types `current` as a _ReadyCompletedTracker; a batch progress's is a _ProcessedTracker
                "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,  # type: ignore[attr-defined]
                "batches_per_epoch": sampler.num_batches,
                "batch_size": sampler.batch_size,  # per device
                "world_size": sampler.num_replicas,
                "dataset_size": len(cast(Sized, sampler.dataset)),
            }
        return state

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = state.get("train_position")
        if self._resume_position is not None:  # Lightning cannot see that the sampler resumes the epoch
            warnings.filterwarnings(
                "ignore", message="You're resuming from a checkpoint that ended before the epoch ended"
            )
        if "mean_image" in state:
            expected = (3, self.resize_size, self.resize_size)
            if tuple(state["mean_image"].shape) != expected:
                raise InputError(
                    f"the checkpoint's mean image is {tuple(state['mean_image'].shape)} but "
                    f"data.resize_size={self.resize_size} needs {expected}"
                )
            self.mean_image = state["mean_image"]

    def prepare_data(self) -> None:
        # Runs on one process per node before `setup`, so ranks read the cached mean image.
        if self.preset == "paper":
            self.load_mean_image()

    def transforms(self) -> dict:
        if self.preset == "paper":
            return paper_transforms(
                self.resize_size, self.crop_size, self.load_mean_image(), self.ten_crop_test, self.train_crops
            )
        return torchvision_transforms(self.resize_size, self.crop_size, self.ten_crop_test)

    def display_transform(self) -> v2.Compose:
        """The validation crop without normalisation, on the 0-1 scale: what a figure shows of an input."""
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(self.resize_size),
                v2.CenterCrop(self.crop_size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def split_dataset(self, split: str, display: bool = False) -> Dataset:
        """Split "train", "val" or "test" without augmentation (centre crops), for analysis and figures."""
        if split not in self.stage_splits:
            raise InputError(f"split must be one of {list(self.stage_splits)}, got {split!r}")
        transform = self.display_transform() if display else self.transforms()["val"]
        return self.make_dataset(self.stage_splits[split], transform)

    def loader_transforms(self) -> dict:
        """The transforms of the training, validation and test loaders: `transforms()` unless part of the work
        happens on the device (`on_before_batch_transfer`)."""
        return self.transforms()

    def collate_fn(self, name: str) -> Callable[[list[Any]], Any] | None:
        """The collate function of loader `name` (None: PyTorch's default)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        wanted: dict[str | None, tuple[str, ...]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
        }
        transforms = self.loader_transforms()
        for name in wanted.get(stage, ("train", "val", "test")):
            if name not in self.datasets:
                self.datasets[name] = self.make_dataset(self.stage_splits[name], transforms[name])

    def _loader(self, name: str) -> DataLoader:
        dataset, sampler = self.datasets[name], None
        if name == "train":
            sampler = self.train_sampler = self._train_sampler(dataset)
            dataset = SeededSamples(dataset)
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size,
            sampler=sampler,
            collate_fn=self.collate_fn(name),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _train_sampler(self, dataset: Dataset) -> EpochSeededSampler:
        """Order and augmentation from (seed, epoch): the seed is `seed_everything`'s, as in Lightning's own
        distributed sampler. A resumed run's sampler starts at the checkpoint's position."""
        trainer = self.trainer
        sampler = EpochSeededSampler(
            dataset,
            batch_size=self.per_device_batch_size,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
        )
        if self._resume_position is not None:
            epoch, batches_done = resume_point(self._resume_position, sampler)
            sampler.resume_from(epoch, batches_done)
            if trainer is None or trainer.is_global_zero:
                log.info(
                    "resuming training at epoch %d, batch %d of %d (1-based)",
                    epoch + 1,
                    batches_done + 1,
                    sampler.num_batches,
                )
        elif (
            trainer is not None
        ):  # the epoch Lightning is about to train (0 in a fresh run), before any iterator exists
            # Lightning types `current` as a _ReadyCompletedTracker; an epoch progress's is a _ProcessedTracker
            sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)  # type: ignore[attr-defined]
        return sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

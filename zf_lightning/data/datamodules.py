"""The datamodules behind `conf/data/`: the built-in synthetic data and a local ImageNet."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from zf_lightning.data.base import ImageClassificationDataModule
from zf_lightning.data.device_decode import (
    DeviceBatch,
    DeviceDecoder,
    PrepareForDevice,
    collate_for_device,
)
from zf_lightning.data.image_files import BadImageLog, check_on_bad_image
from zf_lightning.data.imagenet_folder import ImageNetFolder
from zf_lightning.data.overlap import read_exclude_list
from zf_lightning.data.synthetic import SyntheticShapes
from zf_lightning.utils.errors import InputError

DECODE = ("pil", "reduced", "torchvision", "gpu")  # data.decode of the imagenet datamodule


class SyntheticDataModule(ImageClassificationDataModule):
    """Generated shapes/textures/colours (no download); train, val and test are disjoint draws."""

    stage_splits = {"train": "train", "val": "val", "test": "test"}

    def __init__(
        self,
        num_classes: int = 10,
        train_per_class: int = 500,
        val_per_class: int = 50,
        test_per_class: int = 50,
        image_size: int = 72,
        crop_size: int = 64,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        # image_size and crop_size play the parts of the paper's 256 and 224.
        kwargs.setdefault("resize_size", image_size)
        super().__init__(num_classes=num_classes, crop_size=crop_size, **kwargs)
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.image_size, self.seed = image_size, seed
        SyntheticShapes(num_classes=num_classes, image_size=image_size, seed=seed)  # fail on bad options now

    def dataset_key(self) -> str:
        return (
            f"synthetic|classes={self.num_classes}|per_class={self.per_class['train']}|size={self.image_size}"
            f"|seed={self.seed}"
        )

    def make_dataset(self, split: str, transform: Callable[[Any], Any] | None) -> SyntheticShapes:
        return SyntheticShapes(split, self.num_classes, self.per_class[split], self.image_size, self.seed, transform)


class ImageNetDataModule(ImageClassificationDataModule):
    """A local ImageNet, `<root>/train/<wnid>/*.JPEG` and `<root>/val/<wnid>/*.JPEG`.

    Validation uses the centre crop and testing the 10 crops, both on the `val` folder (test labels are
    not public). File lists are scanned once (`prepare_data`) and cached, so ranks and restarts reuse them.

    An unreadable image is replaced by the next readable one with a warning (`on_bad_image="skip"`) or
    fails the run naming it (`"error"`); skipped, converted and smaller-than-the-crop files are listed in
    `bad_image_log` (a .jsonl file; None: warnings only). See `zf_lightning.data.image_files`.

    `decode="reduced"` decodes JPEGs straight to a reduced size (libjpeg's 1/2, 1/4, 1/8 DCT scaling) whose
    short side is still at least `resize_size`, then resizes as usual: the same crops up to resampling error,
    faster for images whose short side is at least twice `resize_size`. `"pil"` (the default) decodes in full.
    `"torchvision"` decodes with `torchvision.io` straight to uint8 tensors, skipping PIL and the image-to-tensor
    copy: the same pixels (both use libjpeg-turbo), fastest on a `zf-prepare` copy. The mean image is cached
    separately for `reduced`. `"gpu"` (paper preset) has loader workers only read the JPEG files; each batch is
    decoded, resized and cropped on the training device (`zf_lightning.data.device_decode`), with the numbers of
    `"torchvision"` up to the GPU decoder's rounding. Datasets built outside a trainer (`split_dataset`, the
    mean image) decode as `"torchvision"` does.

    `exclude`: a list of training files to leave out (one path a line, relative to `root`, as `zf-overlap`
    writes its near-duplicates of the transfer sets); `excluded` counts those left out. The mean image is
    computed without them (and cached apart).
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int = 1000,
        on_bad_image: str = "skip",
        bad_image_log: str | Path | None = None,
        decode: str = "pil",
        exclude: str | Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, **kwargs)
        if decode not in DECODE:
            raise InputError(f"data.decode must be one of {list(DECODE)}, got {decode!r}")
        if decode == "gpu" and self.preset != "paper":
            raise InputError(
                f"data.decode=gpu implements the paper preset's crops; got data.preset={self.preset!r} "
                f"(use data.decode=torchvision with it)"
            )
        if decode == "gpu" and self.train_crops != "random":
            raise InputError(
                f"data.decode=gpu draws random training crops; got data.train_crops={self.train_crops!r} "
                "(use data.decode=torchvision with it)"
            )
        self.decode = decode
        self._device_decoder: DeviceDecoder | None = None
        self.root = Path(root).expanduser()
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_image_log = Path(bad_image_log).expanduser() if bad_image_log else None
        ImageNetFolder.check_layout(self.root)  # a missing root fails here, before any training work
        self.exclude = Path(exclude).expanduser() if exclude else None
        self.exclude_list = frozenset(read_exclude_list(self.exclude)) if self.exclude else frozenset()  # fails now
        self._excluded: int | None = None

    @property
    def excluded(self) -> int | None:
        """How many training files `exclude` left out (None without `exclude`); builds the file list if needed."""
        if self.exclude is not None and self._excluded is None:
            self.make_dataset("train", None)
        return self._excluded

    def dataset_key(self) -> str:
        key = f"imagenet|root={self.root.resolve()}"
        if self.exclude_list:  # other training images, another mean image
            digest = hashlib.sha256("\n".join(sorted(self.exclude_list)).encode()).hexdigest()[:16]
            key = f"{key}|exclude={digest}"
        return (
            f"{key}|decode=reduced" if self.decode == "reduced" else key
        )  # torchvision decodes the same pixels as PIL

    def prepare_data(self) -> None:
        for split in ("train", "val"):
            self.make_dataset(split, None)  # scans once and writes the file-list cache
        super().prepare_data()

    def make_dataset(self, split: str, transform: Callable[[Any], Any] | None) -> ImageNetFolder:
        on_device = isinstance(transform, PrepareForDevice)
        dataset = ImageNetFolder(
            self.root,
            split,
            transform=transform,
            cache_dir=self.cache_dir,
            expected_num_classes=self.num_classes,
            on_bad_image=self.on_bad_image,
            bad_image_log=BadImageLog(self.bad_image_log),
            min_size=self.crop_size,
            draft_size=self.resize_size if self.decode == "reduced" else None,
            tensor_decode=self.decode in ("torchvision", "gpu") and not on_device,
            device_decode=on_device,
        )
        if split == "train" and self.exclude is not None:
            self._excluded = self._leave_out_excluded(dataset)
        return dataset

    def _leave_out_excluded(self, dataset: ImageNetFolder) -> int:
        """Drop the listed files from the dataset's samples; returns how many were dropped. Listed files that are not
        in the training set are warned about: a list written for another copy of ImageNet leaves out nothing."""
        prefix = os.path.join(self.root, "")  # the samples' paths start with it (string work: 1.28 M of them)
        relative = [path[len(prefix) :] if path.startswith(prefix) else path for path, _ in dataset.samples]
        kept = [sample for sample, name in zip(dataset.samples, relative) if name not in self.exclude_list]
        absent = sorted(self.exclude_list - set(relative))
        if absent:
            warnings.warn(
                f"data.exclude={str(self.exclude)!r}: {len(absent)} of {len(self.exclude_list)} listed files are not "
                f"training images under {self.root} (e.g. {absent[0]}); written for another ImageNet root?",
                stacklevel=3,
            )
        if not kept:
            raise InputError(f"data.exclude={str(self.exclude)!r} leaves out every training image under {self.root}")
        dataset.samples = dataset.imgs = kept
        dataset.targets = [target for _, target in kept]
        return len(relative) - len(kept)

    def loader_transforms(self) -> dict:
        if self.decode != "gpu":
            return super().loader_transforms()
        return {name: PrepareForDevice(self.resize_size, self.crop_size, name) for name in ("train", "val", "test")}

    def collate_fn(self, name: str) -> Callable[[list[Any]], Any] | None:
        return partial(collate_for_device, split=name) if self.decode == "gpu" else None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Still on the host: decode_jpeg reads the bytes from host memory and writes the pixels on the device.
        if not isinstance(batch, DeviceBatch):
            return batch
        if self._device_decoder is None:
            self._device_decoder = DeviceDecoder(
                self.resize_size,
                self.crop_size,
                self.load_mean_image(),
                self.ten_crop_test,
                self.on_bad_image,
                BadImageLog(self.bad_image_log),
            )
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        return self._device_decoder(batch, device)

"""Datamodules: batch shapes per stage, the global batch size, a local ImageNet tree, bad options."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from zf_lightning.data import ImageNetDataModule, SyntheticDataModule


def first_batch(datamodule, stage: str, loader: str):
    datamodule.prepare_data()
    datamodule.setup(stage)
    return next(iter(getattr(datamodule, f"{loader}_dataloader")()))


def synthetic(tmp_path, **options):
    defaults = dict(
        train_per_class=3, val_per_class=2, test_per_class=2, batch_size=8, num_workers=0, cache_dir=tmp_path
    )
    return SyntheticDataModule(**{**defaults, **options})


def test_synthetic_batches_train_crops_and_ten_crop_test(tmp_path):
    images, labels = first_batch(synthetic(tmp_path), "fit", "train")
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32 and labels.shape == (8,)
    assert images.min() < 0 < images.max()  # mean-subtracted, 0-255 scale
    assert images.abs().max() > 2  # not the 0-1 scale
    images, _ = first_batch(synthetic(tmp_path), "test", "test")
    assert images.shape == (8, 10, 3, 64, 64)
    images, _ = first_batch(synthetic(tmp_path, ten_crop_test=False), "test", "test")
    assert images.shape == (8, 3, 64, 64)


def test_torchvision_preset_normalises_with_mean_and_std(tmp_path):
    images, _ = first_batch(synthetic(tmp_path, preset="torchvision"), "validate", "val")
    assert images.shape == (8, 3, 64, 64) and images.abs().max() < 3


def test_batch_size_is_global_and_split_across_devices(tmp_path):
    datamodule = synthetic(tmp_path, batch_size=128)
    datamodule.trainer = SimpleNamespace(world_size=2)
    assert datamodule.per_device_batch_size == 64
    datamodule.trainer = SimpleNamespace(world_size=3)
    with pytest.raises(ValueError, match=r"batch_size=128 \(global\) does not divide across 3 devices"):
        _ = datamodule.per_device_batch_size


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="preset must be one of"):
        synthetic(tmp_path, preset="caffe")
    with pytest.raises(ValueError, match=r"crop_size \(80\) must not exceed data.resize_size \(72\)"):
        synthetic(tmp_path, crop_size=80)


def fake_imagenet(root, classes=("n01440764", "n01443537", "n01484850"), per_class=3):
    for split in ("train", "val"):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (48 + 4 * i, 36), (40 * c, 100, 200 - 10 * i)).save(folder / f"{wnid}_{i}.JPEG")
    return root


def test_imagenet_datamodule_reads_the_extracted_layout(tmp_path):
    root = fake_imagenet(tmp_path / "imagenet")
    datamodule = ImageNetDataModule(
        root, num_classes=3, resize_size=32, crop_size=28, batch_size=4, num_workers=0, cache_dir=tmp_path / "cache"
    )
    images, labels = first_batch(datamodule, "fit", "train")
    assert images.shape == (4, 3, 28, 28) and set(labels.tolist()) <= {0, 1, 2}
    assert datamodule.mean_image.shape == (3, 32, 32)
    images, _ = first_batch(datamodule, "test", "test")
    assert images.shape == (4, 10, 3, 28, 28)
    cached = sorted(p.name.split("_")[0] for p in (tmp_path / "cache").iterdir())
    assert cached == ["imagenet", "imagenet", "mean"]  # file lists of train and val, and the mean image


def test_imagenet_with_a_wrong_class_count_or_missing_root(tmp_path):
    root = fake_imagenet(tmp_path / "imagenet")
    with pytest.raises(ValueError, match="Expected 1000 class folders"):
        ImageNetDataModule(root, num_classes=1000, batch_size=4, num_workers=0, cache_dir=tmp_path).prepare_data()
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{missing}/train/<wnid>/\*\.JPEG and {missing}/val/<wnid>/\*\.JPEG"):
        ImageNetDataModule(missing, cache_dir=tmp_path)

"""Bad image files in the transfer datasets: replaced within their own split, or failing with the file named."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from tests.helpers.fake_trees import make_caltech101, make_voc2012
from zf_lightning.data.image_files import BadImageError, ReadableSubset, summarize_bad_images
from zf_lightning.transfer.datamodule import TransferDataModule
from zf_lightning.transfer.datasets import VOC2012Classification, dataset_by_name


def caltech_datamodule(root, **options) -> TransferDataModule:
    defaults = dict(
        dataset="caltech101",
        root=root,
        num_classes=3,
        train_per_class=3,
        resize_size=40,
        crop_size=32,
        batch_size=4,
        num_workers=0,
        cache_dir=root / "cache",
    )
    return TransferDataModule(**{**defaults, **options})


def test_a_bad_caltech_training_image_is_replaced_by_the_next_training_image(tmp_path):
    make_caltech101(tmp_path, stray_files=False)
    log = tmp_path / "run" / "bad_images.jsonl"
    datamodule = caltech_datamodule(tmp_path, bad_image_log=log)
    full = dataset_by_name("caltech101", tmp_path, transform=pil_to_tensor)
    train_indices = datamodule._split.train.tolist()
    # A training image whose next file on disk is a test image.
    position = next(p for p, i in enumerate(train_indices[:-1]) if i + 1 not in train_indices)
    bad = train_indices[position]
    bad_path = full.samples[bad][0]
    with open(bad_path, "r+b") as f:  # a truncated JPEG
        f.truncate(f.seek(0, 2) // 2)
    train = datamodule.make_dataset("train", pil_to_tensor)
    assert isinstance(train, ReadableSubset)
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad_path}: OSError: .*[Tt]runcated"):
        image, label = train[position]
    # The next image of the training split, not the next file on disk (which may be a test image).
    substitute = train_indices[position + 1]
    assert substitute != bad + 1
    expected_image, expected_label = full[substitute]
    assert torch.equal(image, expected_image) and label == expected_label
    assert train.__getitems__([position, 0])[0][1] == expected_label  # the batched fetch substitutes too
    summary = summarize_bad_images(log)
    assert summary["files"]["skipped"] == [bad_path] and summary["skipped"] == 1


def test_with_on_bad_image_error_a_caltech_or_voc_image_fails_naming_the_file(tmp_path):
    make_caltech101(tmp_path, stray_files=False)
    datamodule = caltech_datamodule(tmp_path, on_bad_image="error")
    datamodule.setup("fit")
    bad = datamodule.datasets["train"].dataset.samples[datamodule._split.train[0]][0]
    open(bad, "wb").close()  # zero bytes
    with pytest.raises(BadImageError, match=f"cannot read image {bad}: empty file"):
        next(iter(datamodule.train_dataloader()))
    with pytest.raises(ValueError, match="data.on_bad_image must be one of"):
        caltech_datamodule(tmp_path, on_bad_image="never")

    voc = make_voc2012(tmp_path / "voc", num_images=6)
    first = voc.voc_dir / "JPEGImages" / f"{voc.image_ids['train'][0]}.jpg"
    first.write_bytes(b"not a jpeg")
    with pytest.raises(BadImageError, match=f"cannot read image {first}"):
        VOC2012Classification(voc.root, "train", on_bad_image="error")[0]
    skipping = VOC2012Classification(voc.root, "train", transform=pil_to_tensor)
    with pytest.warns(UserWarning, match=f"skipping unreadable image {first}"):
        image, targets = skipping[0]
    assert torch.equal(targets, torch.from_numpy(voc.targets["train"][1]).float())  # item 1 with its own labels
    assert torch.equal(image, skipping[1][0])

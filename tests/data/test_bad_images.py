"""Bad image files never end a run: unreadable ones are skipped (or fail, naming the file), odd modes are
converted, images smaller than the crop are used; all of it is listed in the run summary."""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader
from torchvision.datasets.folder import pil_loader
from torchvision.transforms.functional import pil_to_tensor

from tests.helpers.configs import compose_config
from tests.helpers.images import (
    CROP,
    EXPECTED,
    TRAIN,
    expected_files,
    gradient16,
    kind_of,
    make_bad_imagenet,
    train_files,
    write_image_file,
)
from zf_lightning.data import ImageNetDataModule
from zf_lightning.data.image_files import (
    MAX_CONSECUTIVE_BAD,
    BadImageError,
    BadImageLog,
    load_rgb,
    read_bad_image_log,
    summarize_bad_images,
)
from zf_lightning.data.imagenet_folder import ImageNetFolder


@pytest.fixture
def root(tmp_path) -> Path:
    return make_bad_imagenet(tmp_path / "imagenet")


# ---- load_rgb, one kind at a time ----------------------------------------------------------------


def test_good_rgb_images_load_exactly_as_before_and_are_not_logged(root, tmp_path):
    log = BadImageLog(tmp_path / "log.jsonl")
    path = train_files(root)["a0_good.JPEG"]
    image = load_rgb(path, log=log, min_size=CROP)
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(pil_loader(path)))
    assert not (tmp_path / "log.jsonl").exists()


@pytest.mark.parametrize("name", ["a3_cmyk.JPEG", "a4_gray.JPEG", "b5_palette.png"])
def test_other_modes_are_converted_as_pil_converts_them_and_recorded(root, tmp_path, name):
    log = BadImageLog(tmp_path / "log.jsonl")
    path = train_files(root)[name]
    with Image.open(path) as original:
        mode = original.mode
    image = load_rgb(path, log=log, min_size=CROP)
    assert image.mode == "RGB" and image.size == (80, 72)
    assert np.array_equal(np.asarray(image), np.asarray(pil_loader(path)))  # unchanged from before
    (event,) = read_bad_image_log(tmp_path / "log.jsonl")
    assert event == {"path": str(path), "kind": "converted", "reason": f"mode {mode} converted to RGB"}


def test_a_16_bit_png_keeps_its_gradient_in_8_bits(root, tmp_path):
    path = train_files(root)["b4_png16.png"]
    with Image.open(path) as original:
        assert original.mode.startswith("I")  # "I;16" (or "I" in older Pillow)
        clipped = np.asarray(original.convert("RGB"))
    image = load_rgb(path, log=BadImageLog(tmp_path / "log.jsonl"))
    expected = (gradient16() >> 8).astype(np.uint8)  # k * 257 -> k
    assert np.array_equal(expected, np.arange(80 * 72).reshape(72, 80) % 256)
    pixels = np.asarray(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (72, 80, 3)
    for channel in range(3):
        assert np.array_equal(pixels[..., channel], expected)
    assert (clipped == 255).mean() > 0.9  # what PIL's own conversion would have given: nearly all white
    assert [e["kind"] for e in read_bad_image_log(tmp_path / "log.jsonl")] == ["converted"]


def test_an_image_smaller_than_the_crop_is_used_and_recorded(root, tmp_path):
    path = train_files(root)["b6_small.JPEG"]
    image = load_rgb(path, log=BadImageLog(tmp_path / "log.jsonl"), min_size=CROP)
    assert image.size == (40, 30)
    (event,) = read_bad_image_log(tmp_path / "log.jsonl")
    assert event["kind"] == "small" and "40x30" in event["reason"] and "64px crop" in event["reason"]
    assert load_rgb(path, min_size=30) is not None  # the default log (None) records nothing


@pytest.mark.parametrize(
    "name, reason",
    [
        ("a1_corrupt.JPEG", "cannot identify image file"),
        ("b1_truncated.JPEG", "image file is truncated"),
        ("b2_empty.JPEG", "empty file (0 bytes)"),
    ],
)
def test_unreadable_files_are_skipped_with_a_warning_or_fail_naming_the_file(root, tmp_path, name, reason):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # else a truncated file would decode, grey-filled
    path = train_files(root)[name]
    log = BadImageLog(tmp_path / "log.jsonl")
    with pytest.warns(UserWarning, match=rf"skipping unreadable image {path}: .*{re.escape(reason)}"):
        assert load_rgb(path, log=log) is None
    (event,) = read_bad_image_log(tmp_path / "log.jsonl")
    assert event["path"] == str(path) and event["kind"] == "skipped" and reason in event["reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_rgb(path, log=log) is None  # warned once per file, logged once per file
    assert len(read_bad_image_log(tmp_path / "log.jsonl")) == 1
    with pytest.raises(
        BadImageError, match=rf"cannot read image {path}: .*{re.escape(reason)}.*data.on_bad_image=skip would skip it"
    ):
        load_rgb(path, on_bad_image="error")


def test_on_bad_image_must_be_skip_or_error(root):
    with pytest.raises(ValueError, match=r"data.on_bad_image must be one of \['skip', 'error'\], got 'ignore'"):
        load_rgb(train_files(root)["a0_good.JPEG"], on_bad_image="ignore")
    with pytest.raises(ValueError, match="data.on_bad_image must be one of"):
        ImageNetFolder(root, on_bad_image="warn")


def test_truncation_must_stay_detectable(root, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is True"):
        ImageNetFolder(root)


# ---- the log and its summary ---------------------------------------------------------------------


def test_the_log_is_shared_by_worker_copies_and_summarised_once_per_file(tmp_path):
    path = tmp_path / "run" / "bad_images.jsonl"
    assert summarize_bad_images(path) == {
        "skipped": 0,
        "converted": 0,
        "small": 0,
        "files": {"skipped": [], "converted": [], "small": []},
    }
    log = BadImageLog(path)
    assert log.record("/d/x.jpg", "skipped", "broken")
    assert not log.record("/d/x.jpg", "skipped", "broken")  # the same file again (next epoch)
    worker = pickle.loads(pickle.dumps(log))  # as a DataLoader worker receives it
    assert not worker.record("/d/x.jpg", "skipped", "broken")  # it reads what is already in the file
    assert worker.record("/d/y.png", "converted", "mode L converted to RGB")
    assert log.record("/d/y.png", "small", "10x10")  # kinds are counted separately
    with open(path, "a") as f:
        f.write('{"path": "/d/z.jpg", "kind": "skipp')  # a line torn by a killed process is ignored
    assert summarize_bad_images(path) == {
        "skipped": 1,
        "converted": 1,
        "small": 1,
        "files": {"skipped": ["/d/x.jpg"], "converted": ["/d/y.png"], "small": ["/d/y.png"]},
    }
    with pytest.raises(ValueError, match="kind must be one of"):
        log.record("/d/x.jpg", "broken", "")


def test_an_unwritable_log_only_warns(tmp_path):
    (tmp_path / "a_file").write_text("")
    log = BadImageLog(tmp_path / "a_file" / "bad_images.jsonl")  # its folder cannot be made
    with pytest.warns(UserWarning, match="could not write the bad-image log"):
        assert log.record("/d/x.jpg", "skipped", "broken")
    assert log.path is None and log.record("/d/y.jpg", "skipped", "broken")


# ---- datasets: the next readable image stands in -----------------------------------------------


def _next_readable(samples: list[tuple[str, int]], index: int) -> int:
    for step in range(len(samples)):
        j = (index + step) % len(samples)
        if EXPECTED[kind_of(samples[j][0])] != "skipped":
            return j
    raise AssertionError


def test_imagenet_folder_replaces_a_skipped_image_by_the_next_readable_one(root, tmp_path):
    log = tmp_path / "log.jsonl"
    ds = ImageNetFolder(
        root, "train", transform=pil_to_tensor, cache_dir=tmp_path / "cache", bad_image_log=log, min_size=CROP
    )
    reference = ImageNetFolder(root, "train", transform=pil_to_tensor, cache_dir=tmp_path / "cache")
    assert len(ds) == sum(len(names) for names in TRAIN.values())  # skipped files stay in the list
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        items = [ds[i] for i in range(len(ds))]
    for i, (image, label) in enumerate(items):
        j = _next_readable(ds.samples, i)
        assert (j != i) == (EXPECTED[kind_of(ds.samples[i][0])] == "skipped")
        expected_image, expected_label = reference.load_item(j)
        assert torch.equal(image, expected_image) and label == expected_label == ds.samples[j][1]
    assert Path(ds.samples[_next_readable(ds.samples, 7)][0]).name == "b3_good.JPEG"  # b1, b2 both skipped
    assert summarize_bad_images(log)["files"] == expected_files(root, ("train",))
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_with_on_bad_image_error_the_first_bad_file_fails_naming_it(root, tmp_path):
    ds = ImageNetFolder(root, "train", cache_dir=tmp_path / "cache", on_bad_image="error")
    ds[0]
    with pytest.raises(BadImageError, match=rf"cannot read image {train_files(root)['a1_corrupt.JPEG']}"):
        ds[1]
    loader = DataLoader(
        ImageNetFolder(root, "val", transform=pil_to_tensor, cache_dir=tmp_path / "cache", on_bad_image="error"),
        batch_size=1,
    )
    with pytest.raises(
        BadImageError, match=rf"cannot read image {root / 'val' / 'n002' / 'd0_empty.JPEG'}: empty file"
    ):
        list(loader)


def test_a_dataset_of_only_bad_files_fails_clearly(tmp_path):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for n in range(3):
            write_image_file(root / split / "n001" / f"x{n}_empty.JPEG", "empty", n)
    ds = ImageNetFolder(root, "train", cache_dir=tmp_path / "cache")
    with (
        pytest.warns(UserWarning),
        pytest.raises(RuntimeError, match="3 images in a row from item 1 could not be read"),
    ):
        ds[1]
    assert MAX_CONSECUTIVE_BAD < 1000  # a run does give up on a dataset that is bad as a whole


def test_worker_processes_share_the_log(root, tmp_path):
    log = tmp_path / "log.jsonl"
    datamodule = ImageNetDataModule(
        root,
        num_classes=2,
        resize_size=72,
        crop_size=CROP,
        batch_size=4,
        num_workers=2,
        cache_dir=tmp_path / "cache",
        bad_image_log=log,
    )
    datamodule.prepare_data()  # the mean image: every training file, in the main process... or workers
    datamodule.setup("fit")
    for _ in range(2):  # two epochs: new workers, the same bad files
        sizes = [len(labels) for _, labels in datamodule.train_dataloader()]
        assert sizes == [4, 4, 4, 2]  # no item dropped
    events = read_bad_image_log(log)
    assert summarize_bad_images(log)["files"] == expected_files(root, ("train",))
    assert len(events) <= 2 * sum(
        len(paths) for paths in expected_files(root, ("train",)).values()
    )  # not once per epoch


# ---- zf-train end to end -----------------------------------------------------------------------

E2E = [
    "data=imagenet",
    "data.num_classes=2",
    "data.resize_size=72",
    f"data.crop_size={CROP}",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
    "model.net.width_multiplier=0.125",
    "trainer.max_epochs=1",
    "logger=csv",
    "~callbacks.progress_bar",
    "~callbacks.feature_evolution",
]


def test_a_training_run_skips_bad_images_and_lists_them_in_its_summary(root, tmp_path):
    from zf_lightning.cli.train import train

    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        summary = train(compose_config("train", out, [*E2E, f"data.root={root}"]))
    assert summary["status"] == "completed" and "test/top1_err" in summary["test"]
    expected = expected_files(root)
    assert summary["bad_images"] == {"skipped": 4, "converted": 4, "small": 1, "files": expected}
    assert [Path(p).name for p in expected["skipped"]] == [
        "a1_corrupt.JPEG",
        "b1_truncated.JPEG",
        "b2_empty.JPEG",
        "d0_empty.JPEG",
    ]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["bad_images"] == summary["bad_images"]
    assert on_disk["config"]["data"]["bad_image_log"] == str(out / "bad_images.jsonl")


def test_with_on_bad_image_error_the_run_fails_naming_the_file(root, tmp_path):
    from zf_lightning.cli.train import train

    out = tmp_path / "run"
    first_bad = train_files(root)["a1_corrupt.JPEG"]  # the mean image reads the training files in order
    with pytest.raises(BadImageError, match=rf"cannot read image {first_bad}"):
        train(compose_config("train", out, [*E2E, f"data.root={root}", "data.on_bad_image=error"]))
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == "failed" and str(first_bad) in on_disk["error"] and "BadImageError" in on_disk["error"]

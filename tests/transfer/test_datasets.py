"""Caltech-101/256 and VOC 2012 datasets on tiny fake trees in their real layouts, and the per-class split protocol."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tests.helpers.fake_trees import make_caltech101, make_caltech256, make_voc2012
from zf_lightning.transfer.datasets import (
    CALTECH101_EXCLUDED,
    CALTECH256_EXCLUDED,
    VOC_CLASSES,
    Caltech101,
    Caltech256,
    VOC2012Classification,
    dataset_by_name,
)
from zf_lightning.transfer.splits import Split, per_class_split

CALTECHS = {
    "caltech101": (Caltech101, make_caltech101, CALTECH101_EXCLUDED, "caltech101/101_ObjectCategories"),
    "caltech256": (Caltech256, make_caltech256, CALTECH256_EXCLUDED, "caltech256/256_ObjectCategories"),
}


@pytest.fixture(params=sorted(CALTECHS))
def caltech(request, tmp_path):
    """(dataset class, fake tree, excluded folders, relative categories path) of each Caltech set."""
    cls, make, excluded, rel = CALTECHS[request.param]
    return cls, make(tmp_path), excluded, rel


@pytest.fixture
def voc(tmp_path):
    return make_voc2012(tmp_path)


# ---- Caltech ------------------------------------------------------------------------------------


def test_caltech_classes_leave_out_the_excluded_folder(caltech):
    cls, tree, excluded, _ = caltech
    assert all((tree.categories_dir / name).is_dir() for name in excluded)  # it is on disk...
    ds = cls(tree.root)
    assert ds.classes == tree.classes and not set(excluded) & set(ds.classes)  # ...but not a class
    assert ds.class_to_idx == {c: i for i, c in enumerate(tree.classes)}


def test_caltech_images_per_class_and_strays_ignored(caltech):
    cls, tree, _, _ = caltech
    ds = cls(tree.root)
    assert Counter(ds.classes[t] for t in ds.targets) == Counter(tree.counts)
    assert len(ds) == sum(tree.counts.values()) and ds.targets == [label for _, label in ds.samples]
    paths = {Path(p) for p, _ in ds.samples}
    assert all(Path(p).parent == tree.categories_dir / ds.classes[label] for p, label in ds.samples)
    assert len(tree.strays) >= 4 and not paths & set(tree.strays)


def test_caltech_items_are_rgb_and_grayscale_becomes_three_equal_channels(caltech):
    cls, tree, _, _ = caltech
    ds = cls(tree.root, transform=v2.ToImage())
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.shape[0] == 3 and image.dtype == torch.uint8 and label == ds.targets[i]
    (gray_path,) = tree.grayscale
    with Image.open(gray_path) as on_disk:
        assert on_disk.mode == "L"  # so the check below is about the conversion
    gray = next(i for i, (p, _) in enumerate(ds.samples) if Path(p) == gray_path)
    assert cls(tree.root)[gray][0].mode == "RGB"
    image, _ = ds[gray]
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


def test_caltech_expected_num_classes(caltech):
    cls, tree, _, _ = caltech
    assert len(cls(tree.root, expected_num_classes=3).classes) == 3
    with pytest.raises(ValueError, match="expected 101 class folders.*found 3"):
        cls(tree.root, expected_num_classes=101)


def test_caltech_missing_root_names_expected_path(caltech, tmp_path):
    cls, _, _, rel = caltech
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        cls(missing)
    assert str(missing / rel) in str(e.value)


def test_caltech_wrong_layout(caltech, tmp_path):
    cls, tree, _, rel = caltech
    other = tmp_path / "other"
    other.mkdir()
    (other / "some_class").mkdir()  # class folders straight under root: not the layout
    with pytest.raises(FileNotFoundError) as e:
        cls(other)
    assert f"{other / rel} does not exist" in str(e.value)
    # Passing the dataset folder itself (.../caltech101) instead of the folder that contains it.
    with pytest.raises(FileNotFoundError, match="root must be the folder that contains") as e:
        cls(tree.root / rel.split("/")[0])


def test_caltech_empty_class_folder_is_named(caltech):
    cls, tree, _, _ = caltech
    empty = tree.categories_dir / "004.empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    with pytest.raises(FileNotFoundError, match="no images") as e:
        cls(tree.root)
    assert str(empty) in str(e.value)


def test_caltech_only_excluded_folder_means_no_classes(caltech):
    cls, tree, excluded, _ = caltech
    for name in tree.classes:
        shutil.rmtree(tree.categories_dir / name)
    assert (tree.categories_dir / excluded[0]).is_dir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        cls(tree.root)


# ---- PASCAL VOC 2012 ----------------------------------------------------------------------------


@pytest.mark.parametrize("image_set", ["train", "val", "trainval"])
def test_voc_targets_match_independently_computed_matrix(voc, image_set):
    ds = VOC2012Classification(voc.root, image_set)
    assert ds.classes == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert ds.image_ids == voc.image_ids[image_set] and len(ds) == len(ds.image_ids)
    assert ds.targets.dtype == torch.int8 and ds.targets.shape == (len(ds), 20)
    assert np.array_equal(ds.targets.numpy(), voc.targets[image_set])


def test_voc_difficult_handling(voc):
    ds = VOC2012Classification(voc.root, "trainval")
    c = VOC_CLASSES.index
    first, second, third = ds.targets[:3]
    assert first[c("dog")] == -1 and first[c("person")] == 1  # only difficult dogs; part names are not classes
    assert second[c("cat")] == 1 and second[c("chair")] == 1  # a difficult and a non-difficult cat
    assert third[c("car")] == 1 and third[c("bus")] == -1  # car without a <difficult> tag counts as present
    assert set(ds.targets.unique().tolist()) == {-1, 0, 1}


def test_voc_items_are_rgb_with_float_targets(voc):
    ds = VOC2012Classification(voc.root, "trainval", transform=v2.ToImage())
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape[0] == 3 and target.dtype == torch.float32 and torch.equal(target, ds.targets[i].float())
    image, _ = ds[0]  # written as a grayscale JPEG
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert VOC2012Classification(voc.root, "val")[0][0].mode == "RGB"


def test_voc_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        VOC2012Classification(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "VOCdevkit" / "VOC2012" / "Annotations") in str(e.value)
    (tmp_path / "VOC2012" / "Annotations").mkdir(parents=True)  # VOC2012 without VOCdevkit/ above it
    with pytest.raises(FileNotFoundError) as e:
        VOC2012Classification(tmp_path)
    assert f"{tmp_path / 'VOCdevkit' / 'VOC2012'} does not exist" in str(e.value)


def test_voc_missing_image_set_file_is_named(voc):
    (voc.voc_dir / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="image set file") as e:
        VOC2012Classification(voc.root, "val")
    assert str(voc.voc_dir / "ImageSets" / "Main" / "val.txt") in str(e.value)
    assert len(VOC2012Classification(voc.root, "train")) == len(voc.image_ids["train"])


def test_voc_listed_image_without_annotation_or_jpeg(voc):
    image_id = voc.image_ids["train"][1]
    xml = voc.voc_dir / "Annotations" / f"{image_id}.xml"
    xml.rename(xml.with_suffix(".bak"))
    with pytest.raises(FileNotFoundError, match="missing") as e:
        VOC2012Classification(voc.root, "train")
    assert str(xml) in str(e.value)
    xml.with_suffix(".bak").rename(xml)
    (voc.voc_dir / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"{image_id}.jpg"):
        VOC2012Classification(voc.root, "train")


def test_voc_bad_annotation_and_image_set(voc):
    with pytest.raises(ValueError, match="'test'"):
        VOC2012Classification(voc.root, "test")
    xml = voc.voc_dir / "Annotations" / f"{voc.image_ids['train'][0]}.xml"
    xml.write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(ValueError, match="unicorn") as e:
        VOC2012Classification(voc.root, "train")
    assert str(xml) in str(e.value)
    xml.write_text("<annotation><object>")
    with pytest.raises(ValueError, match="cannot parse"):
        VOC2012Classification(voc.root, "train")


def test_dataset_by_name(tmp_path):
    make_caltech101(tmp_path)
    make_caltech256(tmp_path)
    voc = make_voc2012(tmp_path)
    assert type(dataset_by_name("caltech101", tmp_path)) is Caltech101
    assert type(dataset_by_name("caltech256", tmp_path, split="train")) is Caltech256
    val = dataset_by_name("voc2012", tmp_path, split="val", transform=v2.ToImage())
    assert isinstance(val, VOC2012Classification) and val.image_ids == voc.image_ids["val"]
    assert isinstance(val[0][0], torch.Tensor)
    assert dataset_by_name("voc2012", tmp_path).image_set == "train"
    with pytest.raises(ValueError, match="caltech101"):
        dataset_by_name("caltech102", tmp_path)


# ---- per-class splits ---------------------------------------------------------------------------


def _targets(counts: list[int]) -> list[int]:
    return [c for c, n in enumerate(counts) for _ in range(n)]


@pytest.mark.parametrize("train_per_class, max_test", [(3, None), (3, 2), (1, 50), (9, None)])
def test_split_sizes_and_no_overlap(train_per_class, max_test):
    counts = [10, 12, 25]
    targets = np.array(_targets(counts))
    split = per_class_split(targets, train_per_class, seed=0, max_test_per_class=max_test)
    assert split.train.dtype == np.int64 and split.test.dtype == np.int64
    assert np.all(np.diff(split.train) > 0) and np.all(np.diff(split.test) > 0)  # sorted, no repeats
    assert not set(split.train) & set(split.test)
    for c, n in enumerate(counts):
        assert (targets[split.train] == c).sum() == train_per_class
        rest = n - train_per_class
        assert (targets[split.test] == c).sum() == (rest if max_test is None else min(rest, max_test))


def test_split_is_deterministic_per_seed_and_seeds_differ():
    targets = _targets([20, 30, 15])
    splits = {seed: per_class_split(targets, 5, seed, max_test_per_class=8) for seed in range(5)}
    again = per_class_split(targets, 5, 3, max_test_per_class=8)
    assert np.array_equal(again.train, splits[3].train) and np.array_equal(again.test, splits[3].test)
    assert len({tuple(s.train) for s in splits.values()}) == 5
    assert len({tuple(s.test) for s in splits.values()}) == 5


def test_split_is_pinned():
    # The protocol's exact draw, so that a change to it (and to reported numbers) is noticed.
    split = per_class_split(_targets([5, 5]), 2, seed=0)
    expected_train = [int(i) for c in (0, 1) for i in 5 * c + np.random.default_rng([0, c]).permutation(5)[:2]]
    assert split.train.tolist() == sorted(expected_train)
    assert sorted(split.train.tolist() + split.test.tolist()) == list(range(10))


def test_a_class_split_does_not_depend_on_other_classes():
    base = _targets([12, 9])
    # Another class appended, and one interleaved in front: dataset indices move, positions within a class do not.
    appended = base + [2] * 7
    interleaved = [2, 2] + base[:15] + [2] * 3 + base[15:]

    def positions(targets, split_indices, c):
        members = np.flatnonzero(np.asarray(targets) == c)
        return np.flatnonzero(np.isin(members, split_indices))

    reference = per_class_split(base, 4, seed=7, max_test_per_class=5)
    for targets in (appended, interleaved):
        split = per_class_split(targets, 4, seed=7, max_test_per_class=5)
        for c in (0, 1):
            assert np.array_equal(positions(targets, split.train, c), positions(base, reference.train, c))
            assert np.array_equal(positions(targets, split.test, c), positions(base, reference.test, c))


def test_split_of_a_caltech_tree(tmp_path):
    tree = make_caltech101(tmp_path, stray_files=False)
    ds = Caltech101(tree.root)
    split = per_class_split(ds.targets, 5, seed=1, max_test_per_class=2)
    assert isinstance(split, Split) and len(split.train) == 15 and len(split.test) == 2 + 2 + 1  # Faces: 6 - 5 left
    with pytest.raises(ValueError, match=r"at least 7 images.*class 0 has 6"):  # "Faces" (6 images) sorts first
        per_class_split(ds.targets, 6, seed=1)


def test_split_arrays_are_read_only():
    split = per_class_split(_targets([3, 3]), 1, seed=0)
    with pytest.raises(ValueError):
        split.train[0] = 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(train_per_class=0, seed=0), "train_per_class must be an int >= 1"),
        (dict(train_per_class=2, seed=-1), "seed must be an int >= 0"),
        (dict(train_per_class=2, seed=0, max_test_per_class=0), "max_test_per_class must be an int >= 1"),
        (dict(train_per_class=4, seed=0), r"at least 5 images per class.*class 1 has 4; class 2 has 3"),
    ],
)
def test_split_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        per_class_split(_targets([6, 4, 3]), **kwargs)


def test_split_rejects_bad_targets():
    with pytest.raises(ValueError, match="class indices"):
        per_class_split([], 1, seed=0)
    with pytest.raises(ValueError, match="class indices"):
        per_class_split([0, 0, -1, -1], 1, seed=0)

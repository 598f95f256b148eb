"""Tests for ImageNetFolder on tiny fake ImageNet trees (<root>/{train,val}/<wnid>/*.JPEG)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from zf_lightning.data.imagenet_folder import ImageNetFolder

WNIDS = ["n01440764", "n01443537", "n01484850"]
# (wnid, file name, PIL mode, size); covers .JPEG/.jpeg/.jpg/.png, grayscale and CMYK JPEGs.
FILES = [
    ("n01443537", "n01443537_1.JPEG", "RGB", (10, 7)),
    ("n01443537", "n01443537_2.JPEG", "L", (9, 8)),
    ("n01440764", "n01440764_1.JPEG", "CMYK", (12, 6)),
    ("n01440764", "n01440764_2.jpg", "RGB", (5, 11)),
    ("n01484850", "n01484850_1.jpeg", "RGB", (8, 8)),
    ("n01484850", "n01484850_2.png", "RGB", (7, 9)),
]


def _write_image(path: Path, mode: str = "RGB", size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new(mode, size, color=(40,) * len(mode)).save(path, fmt)


def make_tree(root: Path, splits=("train", "val")) -> Path:
    for split in splits:
        for wnid, name, mode, size in FILES:
            _write_image(root / split / wnid / name, mode, size)
        (root / split / WNIDS[0] / "notes.txt").write_text("not an image")  # must be ignored
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "imagenet")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def _forbid_scanning(monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("image folders were rescanned")

    monkeypatch.setattr(torchvision.datasets.folder, "make_dataset", boom)
    monkeypatch.setattr(os, "walk", boom)


@pytest.mark.parametrize("split", ["train", "val"])
def test_items_are_rgb_with_sorted_classes_and_correct_labels(root, cache_dir, split):
    ds = ImageNetFolder(root, split=split, cache_dir=cache_dir)
    assert ds.classes == sorted(WNIDS)
    assert ds.class_to_idx == {w: i for i, w in enumerate(sorted(WNIDS))}
    assert len(ds) == len(FILES)
    expected = {name: (wnid, mode, size) for wnid, name, mode, size in FILES}
    seen_modes = set()
    for i, (path, label) in enumerate(ds.samples):
        wnid, mode, size = expected[Path(path).name]
        assert Path(path).parent == root / split / wnid
        assert label == ds.class_to_idx[wnid] == ds.targets[i]
        img, target = ds[i]
        assert isinstance(img, Image.Image) and img.mode == "RGB"
        assert img.size == size and target == label
        seen_modes.add(mode)
    assert seen_modes == {"RGB", "L", "CMYK"}


def test_transform_is_applied(root, cache_dir):
    ds = ImageNetFolder(root, transform=torchvision.transforms.functional.pil_to_tensor, cache_dir=cache_dir)
    gray = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("n01443537_2.JPEG"))
    x, _ = ds[gray]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 8, 9)


def test_cache_file_written_with_relative_paths(root, cache_dir):
    ds = ImageNetFolder(root, cache_dir=cache_dir)
    assert ds.cache_path == ImageNetFolder.cache_file(root, "train", cache_dir)
    assert ds.cache_path.parent == cache_dir and ds.cache_path.is_file()
    data = json.loads(ds.cache_path.read_text())
    assert data["classes"] == sorted(WNIDS)
    assert [(os.path.join(root, "train", rel), label) for rel, label in data["samples"]] == ds.samples
    assert not any(os.path.isabs(rel) for rel, _ in data["samples"])
    # split and root are part of the key, so they never share a cache file.
    assert ImageNetFolder.cache_file(root, "val", cache_dir) != ds.cache_path
    assert ImageNetFolder.cache_file(root.parent / "other", "train", cache_dir) != ds.cache_path


def test_second_construction_reads_cache_without_rescanning(root, cache_dir, monkeypatch):
    first = ImageNetFolder(root, cache_dir=cache_dir)
    _forbid_scanning(monkeypatch)
    second = ImageNetFolder(root, cache_dir=cache_dir)
    assert second.samples == first.samples and second.classes == first.classes
    assert second[0][0].mode == "RGB"


def test_build_file_list_cache_then_ranks_do_not_rescan(root, cache_dir, monkeypatch):
    path = ImageNetFolder.build_file_list_cache(root, "val", cache_dir)
    assert path == ImageNetFolder.cache_file(root, "val", cache_dir) and path.is_file()
    _forbid_scanning(monkeypatch)
    assert len(ImageNetFolder(root, "val", cache_dir=cache_dir)) == len(FILES)


@pytest.mark.parametrize("garbage", ['{"format": 1, "classes": ["n014', "", "[]", '{"format": 1}', "\x00\xff"])
def test_corrupt_cache_is_ignored_and_rewritten(root, cache_dir, garbage):
    good = ImageNetFolder(root, cache_dir=cache_dir)
    good.cache_path.write_text(garbage, encoding="latin-1")
    again = ImageNetFolder(root, cache_dir=cache_dir)
    assert again.samples == good.samples
    assert json.loads(again.cache_path.read_text())["classes"] == sorted(WNIDS)


def test_new_class_folder_invalidates_cache(root, cache_dir):
    ImageNetFolder(root, cache_dir=cache_dir)
    _write_image(root / "train" / "n00000001" / "n00000001_1.JPEG")
    ds = ImageNetFolder(root, cache_dir=cache_dir)
    assert ds.classes == ["n00000001", *sorted(WNIDS)]
    assert len(ds) == len(FILES) + 1
    assert [label for p, label in ds.samples if "n00000001" in p] == [0]
    assert json.loads(ds.cache_path.read_text())["classes"] == ds.classes


def test_default_cache_dir_from_env(root, tmp_path, monkeypatch):
    monkeypatch.setenv("ZF_CACHE_DIR", str(tmp_path / "envcache"))
    ds = ImageNetFolder(root)
    assert ds.cache_path.parent == tmp_path / "envcache" and ds.cache_path.is_file()


def test_cache_write_is_atomic_and_leaves_no_tmp(root, cache_dir, monkeypatch):
    ds = ImageNetFolder(root, cache_dir=cache_dir)
    assert os.listdir(cache_dir) == [ds.cache_path.name]
    before = ds.cache_path.read_bytes()

    # Simulate a process dying mid-write of a new cache: the old cache must stay intact.
    _write_image(root / "train" / "n00000001" / "x.JPEG")

    def die_mid_write(obj, f, **kwargs):
        f.write('{"format": 1, "classes": [')
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", die_mid_write)
    with pytest.raises(KeyboardInterrupt):
        ImageNetFolder(root, cache_dir=cache_dir)
    assert os.listdir(cache_dir) == [ds.cache_path.name]
    assert ds.cache_path.read_bytes() == before


def test_unwritable_cache_warns_but_works(root, cache_dir, monkeypatch):
    def fail(*args):
        raise PermissionError("read-only")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.warns(UserWarning, match="Could not write"):
        ds = ImageNetFolder(root, cache_dir=cache_dir)
    assert len(ds) == len(FILES)
    assert os.listdir(cache_dir) == []


# ---- errors -----------------------------------------------------------------------------------


def test_missing_root_names_expected_layout(tmp_path, cache_dir):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError) as e:
        ImageNetFolder(missing, cache_dir=cache_dir)
    msg = str(e.value)
    assert str(missing) in msg
    assert f"{missing}/train/<wnid>/*.JPEG" in msg and f"{missing}/val/<wnid>/*.JPEG" in msg


def test_missing_split_folder(tmp_path, cache_dir):
    root = make_tree(tmp_path / "imagenet", splits=("train",))
    with pytest.raises(FileNotFoundError, match="val") as e:
        ImageNetFolder(root, "val", cache_dir=cache_dir)
    assert str(root / "val") in str(e.value) and f"{root}/val/<wnid>/*.JPEG" in str(e.value)


def test_split_without_class_folders(tmp_path, cache_dir):
    root = tmp_path / "imagenet"
    (root / "train").mkdir(parents=True)
    _write_image(root / "train" / "loose.JPEG")  # images directly in train/ are not the layout
    with pytest.raises(FileNotFoundError, match="No class") as e:
        ImageNetFolder(root, cache_dir=cache_dir)
    assert str(root / "train") in str(e.value) and "<wnid>" in str(e.value)


def test_empty_class_folder_is_named(root, cache_dir):
    empty = root / "train" / "n09999999"
    (empty / "sub").mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="No images") as e:
        ImageNetFolder(root, cache_dir=cache_dir)
    assert str(empty) in str(e.value)
    assert not cache_dir.exists() or os.listdir(cache_dir) == []


def test_unknown_split(root, cache_dir):
    with pytest.raises(ValueError, match="'test'") as e:
        ImageNetFolder(root, "test", cache_dir=cache_dir)
    assert "train" in str(e.value) and "val" in str(e.value)


def test_expected_num_classes_mismatch(root, cache_dir):
    with pytest.raises(ValueError) as e:
        ImageNetFolder(root, cache_dir=cache_dir, expected_num_classes=1000)
    assert "1000" in str(e.value) and "found 3" in str(e.value)
    assert len(ImageNetFolder(root, cache_dir=cache_dir, expected_num_classes=3)) == len(FILES)


def test_hidden_folders_are_not_classes(root, cache_dir):
    (root / "train" / ".ipynb_checkpoints").mkdir()
    assert ImageNetFolder(root, cache_dir=cache_dir).classes == sorted(WNIDS)

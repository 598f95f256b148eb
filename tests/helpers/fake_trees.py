"""Tiny Caltech-101, Caltech-256 and PASCAL VOC 2012 trees in exactly their real on-disk layouts, for tests.

Each generator writes under `root` (the folder a dataset class is given) and returns what a test should
expect, computed from what was written rather than by reading the files back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from zf_lightning.transfer.datasets import VOC_CLASSES

CALTECH101_CLASSES = {"accordion": 7, "airplanes": 9, "Faces": 6}
CALTECH256_CLASSES = {"001.ak47": 8, "002.american-flag": 7, "003.backpack": 9}


@dataclass
class FakeCaltech:
    root: Path  # what to pass to Caltech101/Caltech256
    categories_dir: Path  # <root>/caltech101/101_ObjectCategories or <root>/caltech256/256_ObjectCategories
    classes: list[str]  # expected .classes: sorted, excluded folder left out
    counts: dict[str, int]  # images per class
    grayscale: list[Path] = field(default_factory=list)  # "L" mode JPEGs
    strays: list[Path] = field(default_factory=list)  # non-image files and image files that are not samples


def write_jpeg(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    """A random-colour JPEG of random size (30-60 px per side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in rng.integers(30, 61, size=2))
    colour = tuple(int(v) for v in rng.integers(0, 256, size=len(mode)))
    Image.new(mode, (width, height), colour if mode != "L" else colour[0]).save(path, "JPEG")


def _make_caltech(
    root: Path,
    folder: str,
    categories: str,
    classes: Mapping[str, int],
    excluded: str | None,
    file_name,
    grayscale_files: int,
    stray_files: bool,
    seed: int,
) -> FakeCaltech:
    rng = np.random.default_rng(seed)
    root = Path(root)
    categories_dir = root / folder / categories
    tree = FakeCaltech(root, categories_dir, sorted(classes), dict(classes))
    gray_left = grayscale_files
    for class_name, count in classes.items():
        for n in range(1, count + 1):
            path = categories_dir / class_name / file_name(class_name, n)
            mode = "L" if gray_left > 0 else "RGB"
            write_jpeg(path, rng, mode)
            if mode == "L":
                tree.grayscale.append(path)
                gray_left -= 1
    if excluded:
        for n in range(1, 5):
            write_jpeg(categories_dir / excluded / file_name(excluded, n), rng)
    if stray_files:
        first = categories_dir / sorted(classes)[0]
        strays = [
            first / "Thumbs.db",
            first / "notes.txt",
            first / ".hidden_image.jpg",
            first / "greg" / file_name(first.name, 99),
        ]
        for path in strays[:2]:
            path.write_bytes(b"not an image")
        for path in strays[2:]:  # images, but hidden or in a sub-folder: not samples
            write_jpeg(path, rng)
        (categories_dir / "README.txt").write_text("a file next to the class folders, not a class")
        tree.strays = [*strays, categories_dir / "README.txt"]
    return tree


def make_caltech101(
    root: Path,
    classes: Mapping[str, int] = CALTECH101_CLASSES,
    include_background: bool = True,
    grayscale_files: int = 1,
    stray_files: bool = True,
    seed: int = 0,
) -> FakeCaltech:
    """<root>/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg, plus BACKGROUND_Google (4 images)."""
    return _make_caltech(
        root,
        "caltech101",
        "101_ObjectCategories",
        classes,
        "BACKGROUND_Google" if include_background else None,
        lambda class_name, n: f"image_{n:04d}.jpg",
        grayscale_files,
        stray_files,
        seed,
    )


def make_caltech256(
    root: Path,
    classes: Mapping[str, int] = CALTECH256_CLASSES,
    include_clutter: bool = True,
    grayscale_files: int = 1,
    stray_files: bool = True,
    seed: int = 0,
) -> FakeCaltech:
    """<root>/caltech256/256_ObjectCategories/NNN.name/NNN_NNNN.jpg, plus 257.clutter (4 images)."""
    return _make_caltech(
        root,
        "caltech256",
        "256_ObjectCategories",
        classes,
        "257.clutter" if include_clutter else None,
        lambda class_name, n: f"{class_name.split('.')[0]}_{n:04d}.jpg",
        grayscale_files,
        stray_files,
        seed,
    )


# ---- PASCAL VOC 2012 ----------------------------------------------------------------------------


@dataclass
class FakeVOC:
    root: Path  # what to pass to VOC2012Classification
    voc_dir: Path  # <root>/VOCdevkit/VOC2012
    image_ids: dict[str, list[str]]  # image set -> ids in file order
    targets: dict[str, np.ndarray]  # image set -> expected (N, 20) int8 matrix of 1 / 0 / -1
    objects: dict[str, list[tuple[str, int | None]]]  # image id -> (class, difficult; None: no <difficult> tag)


# Hand-made images first, so every case is certainly present; then random ones.
VOC_FIXED_OBJECTS = [
    [("dog", 1), ("person", 0)],  # dog only difficult -> -1; the person has <part>s with names of their own
    [("cat", 1), ("cat", 0), ("chair", 0)],  # cat difficult and not -> 1
    [("car", None), ("bus", 1), ("bus", 1)],  # no <difficult> tag -> not difficult; bus only difficult -> -1
]


def _object_xml(name: str, difficult: int | None, parts: bool) -> str:
    difficult_tag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    box = "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>"
    part = f"<part><name>head</name>{box}</part><part><name>hand</name>{box}</part>" if parts else ""
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"{difficult_tag}{box}{part}</object>"
    )


def _expected_row(objects: list[tuple[str, int | None]]) -> list[int]:
    row = []
    for name in VOC_CLASSES:
        flags = [bool(d) for n, d in objects if n == name]
        row.append(0 if not flags else 1 if not all(flags) else -1)
    return row


def make_voc2012(root: Path, num_images: int = 12, seed: int = 0) -> FakeVOC:
    """<root>/VOCdevkit/VOC2012/{Annotations,JPEGImages,ImageSets/Main}; every other image is in val."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    ids = [f"2008_{n:06d}" for n in range(1, num_images + 1)]
    objects = {}
    for n, image_id in enumerate(ids):
        if n < len(VOC_FIXED_OBJECTS):
            objs = VOC_FIXED_OBJECTS[n]
        else:
            names = rng.choice(VOC_CLASSES, size=int(rng.integers(1, 4)))
            objs = [(str(name), int(rng.random() < 0.3)) for name in names]
        objects[image_id] = objs
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", rng, "L" if n == 0 else "RGB")
        body = "".join(_object_xml(name, d, parts=name == "person") for name, d in objs)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>40</width><height>40</height><depth>3</depth></size><segmented>0</segmented>{body}</annotation>"
        )
    image_ids = {"train": ids[0::2], "val": ids[1::2], "trainval": ids}
    for image_set, listed in image_ids.items():
        (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in listed))
    # A per-class list as in the real devkit; it must not be mistaken for an image set.
    (voc / "ImageSets" / "Main" / "aeroplane_train.txt").write_text("".join(f"{i} -1\n" for i in image_ids["train"]))
    targets = {
        s: np.array([_expected_row(objects[i]) for i in listed], dtype=np.int8).reshape(-1, len(VOC_CLASSES))
        for s, listed in image_ids.items()
    }
    return FakeVOC(root, voc, image_ids, targets, objects)

"""Caltech-101, Caltech-256 and PASCAL VOC 2012 (image-level labels) read from their extracted on-disk layouts.

Nothing is downloaded: each dataset checks its layout first and raises an error naming the expected path.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from zf_lightning.data.image_files import (
    BadImageLog,
    FolderSkipBadImages,
    SkipBadImages,
)
from zf_lightning.utils.errors import InputError, MissingInputError

CALTECH101_EXCLUDED = ("BACKGROUND_Google",)  # not an object class; the paper's 101 classes leave it out
CALTECH256_EXCLUDED = ("257.clutter",)  # the background class; the paper's 256 classes leave it out

VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_IMAGE_SETS = ("train", "val", "trainval")
# Values of VOC2012Classification.targets.
PRESENT, ABSENT, DIFFICULT_ONLY = 1, 0, -1


def _is_image(entry: os.DirEntry) -> bool:
    # Hidden files (macOS "._x.jpg" forks) are not images even with an image extension.
    return entry.is_file() and not entry.name.startswith(".") and has_file_allowed_extension(entry.name, IMG_EXTENSIONS)


class _CaltechFolder(FolderSkipBadImages, torchvision.datasets.ImageFolder):
    """``ImageFolder`` over ``<root>/<folder>/<categories>/<class>/*.jpg`` minus the excluded class folders.

    Only image files directly inside a class folder are samples: other files and sub-folders are ignored,
    as torchvision's own Caltech classes do. Images are loaded as RGB PIL images (Caltech has grayscale JPEGs);
    an unreadable file is replaced by the next readable sample or fails naming it (`on_bad_image`, see
    `zf_lightning.data.image_files`).
    """

    name: str  # for messages
    folder: str  # the folder under root that holds the dataset
    categories: str  # the folder of class folders inside it
    excluded: tuple[str, ...]
    file_pattern: str  # how the files inside a class folder are named, for messages

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Any], Any] | None = None,
        expected_num_classes: int | None = None,
        on_bad_image: str = "skip",
        bad_image_log: BadImageLog | str | Path | None = None,
        min_size: int | None = None,
    ):
        self.init_bad_images(on_bad_image, bad_image_log, min_size)
        self.categories_dir = self.check_layout(root)
        self.dataset_root = Path(root).expanduser()
        self.expected_num_classes = expected_num_classes
        # find_classes/make_dataset below are called by DatasetFolder.__init__; read_image always converts
        # to RGB (the default loader would not under the accimage backend).
        super().__init__(str(self.categories_dir), transform=transform, loader=self.read_image)

    @classmethod
    def layout(cls, root: str | Path) -> str:
        return (
            f"Expected {cls.name} laid out as "
            f"{Path(root).expanduser()}/{cls.folder}/{cls.categories}/<class>/{cls.file_pattern}."
        )

    @classmethod
    def check_layout(cls, root: str | Path) -> Path:
        """The folder of class folders; FileNotFoundError naming the expected layout if it is missing."""
        root = Path(root).expanduser()
        categories_dir = root / cls.folder / cls.categories
        if categories_dir.is_dir():
            return categories_dir
        hint = ""
        if (root / cls.categories).is_dir():  # a common slip: passing the dataset folder itself
            hint = (
                f" {root / cls.categories} exists: root must be the folder that contains {cls.folder}/{cls.categories}."
            )
        problem = f"root {root} does not exist" if not root.is_dir() else f"{categories_dir} does not exist"
        raise MissingInputError(f"{cls.name}: {problem}. {cls.layout(root)}{hint}")

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        folders = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        classes = [c for c in folders if c not in self.excluded]
        if not classes:
            raise MissingInputError(f"{self.name}: no class folders in {directory}. {self.layout(self.dataset_root)}")
        if self.expected_num_classes is not None and len(classes) != self.expected_num_classes:
            raise InputError(
                f"{self.name}: expected {self.expected_num_classes} class folders in {directory} "
                f"(not counting {', '.join(self.excluded)}) but found {len(classes)}."
            )
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: str | tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        samples: list[tuple[str, int]] = []
        empty: list[str] = []
        for class_name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
            class_dir = os.path.join(directory, class_name)
            files = sorted(e.name for e in os.scandir(class_dir) if _is_image(e))
            if not files:
                empty.append(class_dir)
            samples.extend((os.path.join(class_dir, f), label) for f in files)
        if empty:
            raise MissingInputError(
                f"{self.name}: no images ({', '.join(IMG_EXTENSIONS)}) in class folder(s): "
                f"{', '.join(empty)}. {self.layout(self.dataset_root)}"
            )
        return samples


class Caltech101(_CaltechFolder):
    """Caltech-101 from ``<root>/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg``: 101 classes."""

    name, folder, categories = "Caltech-101", "caltech101", "101_ObjectCategories"
    excluded, file_pattern = CALTECH101_EXCLUDED, "image_NNNN.jpg"


class Caltech256(_CaltechFolder):
    """Caltech-256 from ``<root>/caltech256/256_ObjectCategories/NNN.name/NNN_NNNN.jpg``: 256 classes."""

    name, folder, categories = "Caltech-256", "caltech256", "256_ObjectCategories"
    excluded, file_pattern = CALTECH256_EXCLUDED, "NNN_NNNN.jpg (class folders named NNN.name)"


class VOC2012Classification(SkipBadImages, Dataset):
    """PASCAL VOC 2012 image-level labels of the 20 classes, from ``<root>/VOCdevkit/VOC2012``.

    ``targets[i, c]`` is 1 if image i has at least one non-difficult object of class c, -1 if all its
    objects of class c are difficult (the devkit ignores that image for class c), else 0.
    Items are ``(transform(RGB PIL image), targets[i] as float)``; an unreadable image is replaced by the
    next readable item (with its own targets) or fails naming it (`on_bad_image`).
    """

    def __init__(
        self,
        root: str | Path,
        image_set: str = "train",
        transform: Callable[[Any], Any] | None = None,
        on_bad_image: str = "skip",
        bad_image_log: BadImageLog | str | Path | None = None,
        min_size: int | None = None,
    ):
        self.init_bad_images(on_bad_image, bad_image_log, min_size)
        self.voc_dir = self.check_layout(root, image_set)
        self.image_set = image_set
        self.transform = transform
        self.classes = list(VOC_CLASSES)
        self.image_ids = self.read_image_ids(self.voc_dir, image_set)
        self.targets = torch.tensor(
            [self.parse_annotation(self.voc_dir / "Annotations" / f"{i}.xml") for i in self.image_ids], dtype=torch.int8
        ).reshape(-1, len(VOC_CLASSES))

    @staticmethod
    def layout(root: str | Path) -> str:
        voc = Path(root).expanduser() / "VOCdevkit" / "VOC2012"
        return (
            f"Expected PASCAL VOC 2012 laid out as {voc}/Annotations/<id>.xml, {voc}/JPEGImages/<id>.jpg and "
            f"{voc}/ImageSets/Main/{{{','.join(VOC_IMAGE_SETS)}}}.txt (one image id per line)."
        )

    @classmethod
    def check_layout(cls, root: str | Path, image_set: str = "train") -> Path:
        """The VOC2012 folder; ValueError for an unknown image set, FileNotFoundError naming a missing path."""
        if image_set not in VOC_IMAGE_SETS:
            raise InputError(f"PASCAL VOC 2012: unknown image_set {image_set!r}; expected one of {VOC_IMAGE_SETS}.")
        root = Path(root).expanduser()
        voc = root / "VOCdevkit" / "VOC2012"
        if not root.is_dir():
            raise MissingInputError(f"PASCAL VOC 2012: root {root} does not exist. {cls.layout(root)}")
        for path in (voc, voc / "Annotations", voc / "JPEGImages", voc / "ImageSets" / "Main"):
            if not path.is_dir():
                raise MissingInputError(f"PASCAL VOC 2012: {path} does not exist. {cls.layout(root)}")
        if not (voc / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            raise MissingInputError(
                f"PASCAL VOC 2012: image set file {voc / 'ImageSets' / 'Main' / f'{image_set}.txt'} "
                f"does not exist. {cls.layout(root)}"
            )
        return voc

    @staticmethod
    def read_image_ids(voc_dir: Path, image_set: str) -> list[str]:
        """The ids listed in ImageSets/Main/<image_set>.txt; each needs its annotation and its JPEG."""
        list_file = voc_dir / "ImageSets" / "Main" / f"{image_set}.txt"
        image_ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        if not image_ids:
            raise InputError(f"PASCAL VOC 2012: {list_file} lists no image ids.")
        for folder, suffix in (("Annotations", ".xml"), ("JPEGImages", ".jpg")):
            missing = [
                str(voc_dir / folder / f"{i}{suffix}")
                for i in image_ids
                if not (voc_dir / folder / f"{i}{suffix}").is_file()
            ]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise MissingInputError(
                    f"PASCAL VOC 2012: {len(missing)} file(s) listed in {list_file} are missing: {shown}"
                )
        return image_ids

    @staticmethod
    def parse_annotation(xml_path: Path) -> list[int]:
        """One row of targets: 1 / 0 / -1 per class in VOC_CLASSES order, from the annotation's <object>s."""
        try:
            annotation = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            raise InputError(f"PASCAL VOC 2012: cannot parse {xml_path}: {error}") from None
        row = [ABSENT] * len(VOC_CLASSES)
        # Direct <object> children only, and their own <name>: a person's <part>s (head, hand, foot) have names too.
        for obj in annotation.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in VOC_CLASSES:
                raise InputError(
                    f"PASCAL VOC 2012: {xml_path} has an object of unknown class {name!r}; "
                    f"expected one of {VOC_CLASSES}."
                )
            difficult = (obj.findtext("difficult") or "0").strip() == "1"  # a few VOC2012 objects have no <difficult>
            c = VOC_CLASSES.index(name)
            if not difficult:
                row[c] = PRESENT
            elif row[c] == ABSENT:
                row[c] = DIFFICULT_ONLY
        return row

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_item(self, index: int) -> tuple[Any, torch.Tensor] | None:
        """(transformed image, targets) of item `index`, or None if its file was skipped."""
        image = self.read_image(self.voc_dir / "JPEGImages" / f"{self.image_ids[index]}.jpg")
        if image is None:
            return None
        return (self.transform(image) if self.transform is not None else image), self.targets[index].float()


DATASETS = ("caltech101", "caltech256", "voc2012")


def dataset_by_name(
    name: str,
    root: str | Path,
    split: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    **bad_images: Any,
) -> Dataset:
    """One of DATASETS under `root`. `split` is VOC's image set (default "train"); the Caltech sets have no
    predefined split (see `splits.per_class_split`), so it is ignored for them. `bad_images`: `on_bad_image`,
    `bad_image_log`, `min_size` (see `zf_lightning.data.image_files`)."""
    if name == "caltech101":
        return Caltech101(root, transform=transform, **bad_images)
    if name == "caltech256":
        return Caltech256(root, transform=transform, **bad_images)
    if name == "voc2012":
        return VOC2012Classification(root, image_set=split or "train", transform=transform, **bad_images)
    raise InputError(f"Unknown transfer dataset {name!r}; expected one of {DATASETS}.")

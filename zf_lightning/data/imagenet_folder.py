"""ImageNet in the extracted ``<root>/{train,val}/<wnid>/*.JPEG`` layout, with a cached file list."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torchvision
from torchvision.datasets.folder import DatasetFolder, has_file_allowed_extension

from zf_lightning.data.image_files import BadImageLog, FolderSkipBadImages
from zf_lightning.utils.errors import InputError, MissingInputError
from zf_lightning.utils.io import atomic_write, default_cache_dir

SPLITS = ("train", "val")
EXTENSIONS = (".jpeg", ".jpg", ".png")  # matched case-insensitively (ImageNet uses .JPEG)
CACHE_FORMAT = 1


def _is_image(path: str) -> bool:
    return has_file_allowed_extension(path, EXTENSIONS)


class ImageNetFolder(FolderSkipBadImages, torchvision.datasets.ImageFolder):
    """``ImageFolder`` over ``<root>/<split>`` whose (path, label) list is cached as JSON in ``cache_dir``.

    The cache is keyed by absolute root + split + extensions and is trusted as long as its class list
    matches the class folders on disk; added/removed images inside a class are not detected.

    Images are read with `load_rgb`: an unreadable file is replaced by the next readable one
    (``on_bad_image="skip"``) or fails naming it (``"error"``); events go to ``bad_image_log``, and images
    with a short side under ``min_size`` (the crop) are recorded as small. With ``draft_size``, JPEGs are
    decoded straight to a reduced size whose short side is at least ``draft_size`` (see `load_rgb`); with
    ``tensor_decode``, torchvision decodes them straight to uint8 tensors (see `load_rgb_tensor`); with
    ``device_decode``, whole baseline JPEGs are read as bytes for the training device to decode (see
    `zf_lightning.data.device_decode`).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Any], Any] | None = None,
        cache_dir: str | Path | None = None,
        expected_num_classes: int | None = None,
        on_bad_image: str = "skip",
        bad_image_log: BadImageLog | str | Path | None = None,
        min_size: int | None = None,
        draft_size: int | None = None,
        tensor_decode: bool = False,
        device_decode: bool = False,
    ):
        if split not in SPLITS:
            raise InputError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        self.init_bad_images(on_bad_image, bad_image_log, min_size, draft_size, tensor_decode, device_decode)
        root = Path(root).expanduser()
        layout = self.check_layout(root, splits=(split,))
        self.split = split
        self.dataset_root = root
        self.expected_num_classes = expected_num_classes
        self._layout = layout
        self.cache_path = self.cache_file(root, split, cache_dir)
        # find_classes/make_dataset below are called by DatasetFolder.__init__; is_valid_file replaces
        # ImageFolder's fixed IMG_EXTENSIONS with ours.
        super().__init__(str(root / split), transform=transform, loader=self.read_image, is_valid_file=_is_image)
        self.extensions = EXTENSIONS

    @staticmethod
    def check_layout(root: str | Path, splits: tuple[str, ...] = SPLITS) -> str:
        """Raise FileNotFoundError naming the expected layout unless root and its split folders exist."""
        root = Path(root).expanduser()
        layout = (
            f"Expected ImageNet laid out as {root}/train/<wnid>/*.JPEG and {root}/val/<wnid>/*.JPEG "
            f"(val images already sorted into wnid folders)."
        )
        if not root.is_dir():
            raise MissingInputError(f"ImageNet root {root} does not exist or is not a directory. {layout}")
        for split in splits:
            if not (root / split).is_dir():
                raise MissingInputError(f"Split folder {root / split} does not exist. {layout}")
        return layout

    @staticmethod
    def cache_file(root: str | Path, split: str, cache_dir: str | Path | None = None) -> Path:
        key = f"{Path(root).expanduser().resolve()}|{split}|{','.join(EXTENSIONS)}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"imagenet_{split}_{digest}.json"

    @classmethod
    def build_file_list_cache(
        cls,
        root: str | Path,
        split: str = "train",
        cache_dir: str | Path | None = None,
        expected_num_classes: int | None = None,
    ) -> Path:
        """Scan (or validate) once and return the cache path; call from ``prepare_data`` on rank 0."""
        return cls(root, split, cache_dir=cache_dir, expected_num_classes=expected_num_classes).cache_path

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        # Only the top-level class folders are listed; hidden dirs (e.g. .ipynb_checkpoints) are not classes.
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise MissingInputError(f"No class (wnid) folders found in {directory}. {self._layout}")
        if self.expected_num_classes is not None and len(classes) != self.expected_num_classes:
            raise InputError(
                f"Expected {self.expected_num_classes} class folders in {directory} "
                f"but found {len(classes)}. {self._layout}"
            )
        return classes, {c: i for i, c in enumerate(classes)}

    def make_dataset(
        self,
        directory: str | Path,
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        classes = sorted(class_to_idx, key=class_to_idx.__getitem__)
        samples = self._read_cache(directory, classes)
        if samples is not None:
            return samples
        samples = DatasetFolder.make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty=True)
        empty = sorted(set(classes) - {classes[label] for _, label in samples})
        if empty and not allow_empty:
            folders = ", ".join(os.path.join(directory, c) for c in empty)
            raise MissingInputError(f"No images ({'/'.join(EXTENSIONS)}) in class folder(s): {folders}. {self._layout}")
        self._write_cache(directory, classes, samples)
        return samples

    def _read_cache(self, directory: str | Path, classes: list[str]) -> list[tuple[str, int]] | None:
        try:
            with open(self.cache_path, encoding="utf-8") as f:
                data = json.load(f)
            if data["format"] != CACHE_FORMAT or data["classes"] != classes:
                return None  # stale: class folders changed since the cache was written
            n = len(classes)
            samples = [(os.path.join(directory, rel), int(label)) for rel, label in data["samples"]]
            if not samples or not all(0 <= label < n for _, label in samples):
                return None
            return samples
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or corrupt cache: rescan and rewrite

    def _write_cache(self, directory: str | Path, classes: list[str], samples: list[tuple[str, int]]) -> None:
        data = {
            "format": CACHE_FORMAT,
            "root": os.path.abspath(directory),
            "extensions": list(EXTENSIONS),
            "classes": classes,
            "samples": [[os.path.relpath(p, directory), label] for p, label in samples],
        }

        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, separators=(",", ":"))

        try:  # readers never see a half-written cache; other users of a shared cache dir can read it (umask)
            atomic_write(self.cache_path, write)
        except OSError as e:  # an unwritable cache dir only costs a rescan next time
            warnings.warn(f"Could not write ImageNet file-list cache {self.cache_path}: {e}", stacklevel=3)

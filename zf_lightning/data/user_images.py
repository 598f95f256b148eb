"""A folder of the user's own images, for the analyses, and where a box drawn on an original lands in the crop."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import yaml
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

from zf_lightning.utils.errors import InputError, MissingInputError


def list_images(image_dir: str | Path, recursive: bool = False) -> list[Path]:
    """The image files inside `image_dir` (by extension, sorted by path; in its sub-folders too if `recursive`,
    hidden ones left out); other files are ignored."""
    image_dir = Path(image_dir).expanduser()
    if not image_dir.is_dir():
        raise MissingInputError(
            f"image_dir={str(image_dir)!r}: no such folder; expected a folder of images ({', '.join(IMG_EXTENSIONS)})"
        )
    candidates = image_dir.rglob("*") if recursive else image_dir.iterdir()
    files = sorted(
        p
        for p in candidates
        if p.is_file()
        and p.suffix.lower() in IMG_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(image_dir).parts)
    )
    if not files:
        raise MissingInputError(
            f"image_dir={str(image_dir)!r} holds no images; expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return files


def read_rgb(path: Path) -> Image.Image:
    """Decode the whole image now (not lazily), as RGB, so that a truncated file fails here."""
    with Image.open(path) as image:
        return image.convert("RGB")


class UserImages(Dataset):
    """Images of one folder as (transform(image), label); every file is decoded once up front.

    Args:
        image_dir: the folder; its image files are taken in name order.
        labels: file name -> class (index or one of `class_names`); None: every label is -1 (unknown).
        class_names: the model's class names, to accept names in `labels`.
        transform: applied to each RGB PIL image.
        recursive: also the images in sub-folders (named by their path inside `image_dir`); when no `labels` are
            given and every image sits in a sub-folder named after one of `class_names` (an ImageFolder layout),
            the folder is its label.
        decode_up_front: decode every file now, so that an unreadable one is named before any work (for a few
            images); False for large folders, which are then read once, when scanned.
    """

    def __init__(
        self,
        image_dir: str | Path,
        labels: Mapping | None = None,
        class_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        recursive: bool = False,
        decode_up_front: bool = True,
    ) -> None:
        root = Path(image_dir).expanduser()
        self.files = list_images(root, recursive=recursive)
        self.names = [p.relative_to(root).as_posix() for p in self.files]
        unreadable = []
        self.sizes: list[tuple[int, int]] = []  # (height, width) of each original; empty unless decoded up front
        for path in self.files if decode_up_front else []:
            try:
                image = read_rgb(path)
                self.sizes.append((image.height, image.width))
            except (OSError, UnidentifiedImageError, ValueError) as error:
                unreadable.append(f"{path.name} ({type(error).__name__}: {error})")
        if unreadable:
            raise InputError(
                f"image_dir={str(image_dir)!r}: {len(unreadable)} unreadable image(s): {'; '.join(unreadable)}"
            )
        folders = [name.split("/")[0] if "/" in name else None for name in self.names]
        if labels is not None:
            self.targets = resolve_labels(labels, self.names, class_names, num_classes)
        elif class_names and all(folder in class_names for folder in folders):
            index = {name: i for i, name in enumerate(class_names)}
            self.targets = [index[cast(str, folder)] for folder in folders]
        else:
            self.targets = [-1] * len(self.files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = read_rgb(self.files[index])
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def load_mapping(source: str | Path | Mapping, what: str) -> dict:
    """A mapping given inline or as a .json/.yaml/.yml file."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise MissingInputError(f"{what}={str(path)!r}: no such file; expected a .json or .yaml file")
    if path.suffix.lower() not in (".json", ".yaml", ".yml"):
        raise InputError(f"{what}={str(path)!r}: expected a .json, .yaml or .yml file, got {path.suffix!r}")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:  # their messages say where the syntax is wrong
        raise InputError(f"{what}={str(path)!r} could not be parsed: {error}") from None
    if not isinstance(data, Mapping):
        raise InputError(
            f"{what}={str(path)!r}: expected a mapping of image file name -> ..., got {type(data).__name__}"
        )
    return dict(data)


def resolve_labels(
    labels: str | Path | Mapping, names: Sequence[str], class_names: Sequence[str] | None, num_classes: int | None
) -> list[int]:
    """Class index of every image from a file name -> class (index or name) mapping; every image needs one."""
    mapping = load_mapping(labels, "labels")
    missing = [name for name in names if name not in mapping]
    unknown_files = sorted(set(mapping) - set(names))
    if missing or unknown_files:
        raise InputError(
            f"labels: images without a label: {missing}; labels for files not in the folder: {unknown_files}"
        )
    index_of = {name: i for i, name in enumerate(class_names or [])}
    targets, bad = [], []
    for name in names:
        value = mapping[name]
        if isinstance(value, str) and value in index_of:
            targets.append(index_of[value])
        elif (
            isinstance(value, int) and not isinstance(value, bool) and (num_classes is None or 0 <= value < num_classes)
        ):
            targets.append(value)
        else:
            bad.append(f"{name}: {value!r}")
    if bad:
        expected = f"a class index in 0..{num_classes - 1}" if num_classes else "a class index"
        raise InputError(f"labels: unknown classes {bad}; expected {expected} or a class name of the model")
    return targets


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """torchvision's `Resize(short_side)` output size: the short side to `short_side`, the long side truncated."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def center_crop_offset(size: int, crop: int) -> int:
    return int(round((size - crop) / 2.0))  # as torchvision's center_crop


def box_in_input(
    box: Sequence[float], original_size: tuple[int, int], resize_size: int, crop_size: int, preset: str = "paper"
) -> tuple[int, int, int, int]:
    """[left, top, right, bottom) on the original image -> the same region in the network input.

    The input is made as the datamodule's validation transform makes it: short side to `resize_size`,
    then (preset "paper") the centre `resize_size` square and its centre `crop_size` square, or (preset
    "torchvision") the centre `crop_size` square. Edges are rounded outwards and the box is cut to the
    crop; a box entirely outside the crop is an error.
    """
    height, width = original_size
    left, top, right, bottom = box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise InputError(
            f"box {list(box)} lies outside the {width}x{height} image; expected 0 <= left < right <= {width}, "
            f"0 <= top < bottom <= {height}"
        )
    new_h, new_w = resized_size(height, width, resize_size)
    sy, sx = new_h / height, new_w / width
    crops = (resize_size, crop_size) if preset == "paper" else (crop_size,)
    dy = dx = 0
    for crop in crops:  # successive centre crops
        dy, new_h = dy + center_crop_offset(new_h, crop), crop
        dx, new_w = dx + center_crop_offset(new_w, crop), crop
    mapped = (
        math.floor(left * sx) - dx,
        math.floor(top * sy) - dy,
        math.ceil(right * sx) - dx,
        math.ceil(bottom * sy) - dy,
    )
    x0, y0, x1, y1 = max(mapped[0], 0), max(mapped[1], 0), min(mapped[2], crop_size), min(mapped[3], crop_size)
    if x0 >= x1 or y0 >= y1:
        raise InputError(
            f"box {list(box)} falls outside the centre {crop_size}x{crop_size} crop the network sees "
            f"(at {list(mapped)})"
        )
    return x0, y0, x1, y1

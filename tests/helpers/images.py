"""Image files for tests: photograph-like pictures, and an ImageNet-layout tree with one file of each bad kind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth blobs at a few scales plus a little grain: compresses and resamples like a photograph."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), 128.0, np.float32)
    for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 15.0)):
        small = np.clip(rng.normal(0, 1, (max(2, cells * height // width), cells, 3)) * 60 + 128, 0, 255).astype(
            np.uint8
        )
        image += (
            (np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32) - 128)
            * amplitude
            / 60
        )
    image += rng.normal(0, 2, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def save_image(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


CROP = 64  # the e2e run's crop (data.crop_size); good images are larger


def _jpeg_bytes(seed: int, size=(80, 72), mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode) if mode != "RGB" else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def gradient16() -> np.ndarray:
    """A 16-bit grayscale gradient: 8-bit value k is stored as k * 257 (0 ... 65535)."""
    return (np.arange(80 * 72, dtype=np.int64) % 256 * 257).astype(np.uint16).reshape(72, 80)


# file name -> (how to write it, what load_rgb should record: None, "converted", "small" or "skipped")
def write_image_file(path: Path, kind: str, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "good":
        path.write_bytes(_jpeg_bytes(seed))
    elif kind == "corrupt":
        path.write_bytes(b"\xff\xd8 this is not a JPEG at all " * 20)
    elif kind == "truncated":
        data = _jpeg_bytes(seed)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind in ("cmyk", "gray"):
        path.write_bytes(_jpeg_bytes(seed, mode={"cmyk": "CMYK", "gray": "L"}[kind]))
    elif kind == "png16":
        Image.fromarray(gradient16()).save(path, "PNG")
    elif kind == "palette":
        Image.open(io.BytesIO(_jpeg_bytes(seed))).convert("P", palette=Image.Palette.ADAPTIVE).save(path, "PNG")
    elif kind == "small":
        path.write_bytes(_jpeg_bytes(seed, size=(40, 30)))
    else:
        raise ValueError(kind)


EXPECTED = {
    "good": None,
    "corrupt": "skipped",
    "truncated": "skipped",
    "empty": "skipped",
    "cmyk": "converted",
    "gray": "converted",
    "png16": "converted",
    "palette": "converted",
    "small": "small",
}
# Sorted by name inside each class folder, as ImageFolder lists them. Two unreadable files in a row
# (truncated, then empty) check that substitution moves on to the next readable file.
TRAIN = {
    "n001": ["a0_good.JPEG", "a1_corrupt.JPEG", "a2_good.JPEG", "a3_cmyk.JPEG", "a4_gray.JPEG", "a5_good.JPEG"],
    "n002": [
        "b0_good.JPEG",
        "b1_truncated.JPEG",
        "b2_empty.JPEG",
        "b3_good.JPEG",
        "b4_png16.png",
        "b5_palette.png",
        "b6_small.JPEG",
        "b7_good.JPEG",
    ],
}
VAL = {"n001": ["c0_good.JPEG", "c1_good.JPEG"], "n002": ["d0_empty.JPEG", "d1_good.JPEG", "d2_good.JPEG"]}


def kind_of(path: str | Path) -> str:
    return Path(path).stem.split("_", 1)[1]


def make_bad_imagenet(root: Path) -> Path:
    """<root>/{train,val}/<wnid>/ with good JPEGs and one file of each bad kind (see TRAIN, VAL)."""
    seed = 0
    for split, tree in (("train", TRAIN), ("val", VAL)):
        for wnid, names in tree.items():
            for name in names:
                seed += 1
                write_image_file(root / split / wnid / name, kind_of(name), seed)
    return root


def expected_files(root: Path, splits=("train", "val")) -> dict[str, list[str]]:
    files = {"skipped": [], "converted": [], "small": []}
    for split in splits:
        for wnid, names in {"train": TRAIN, "val": VAL}[split].items():
            for name in names:
                if EXPECTED[kind_of(name)]:
                    files[EXPECTED[kind_of(name)]].append(str(root / split / wnid / name))
    return {kind: sorted(paths) for kind, paths in files.items()}


def train_files(root: Path) -> dict[str, Path]:
    return {name: root / "train" / wnid / name for wnid, names in TRAIN.items() for name in names}

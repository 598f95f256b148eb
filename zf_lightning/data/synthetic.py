"""Procedurally generated, class-discriminative images: the default dataset (no download)."""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Sequence
from typing import Any, SupportsInt

import numpy as np
import torch
from torch.utils.data import Dataset

from zf_lightning.utils.errors import InputError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "star", "crescent", "heart")
TEXTURES = ("plain", "h-striped", "v-striped", "diagonal-striped", "checkered", "dotted")
HUES = (
    ("red", 0.0),
    ("orange", 0.075),
    ("yellow", 0.15),
    ("green", 0.33),
    ("cyan", 0.5),
    ("blue", 0.63),
    ("purple", 0.76),
    ("magenta", 0.88),
)
MAX_CLASSES = len(SHAPES) * len(TEXTURES) * len(HUES)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_CLASS_TAG = 0xC1A55  # keeps the class-definition stream apart from the per-item streams


def _polygon(r: np.ndarray, th: np.ndarray, n: int) -> np.ndarray:
    # Regular n-gon with circumradius 1, one vertex pointing up (image y grows downwards).
    sector = np.mod(th + np.pi / 2, 2 * np.pi / n) - np.pi / n
    return r * np.cos(sector) <= math.cos(math.pi / n)


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of `shape` in object coordinates, where the shape spans roughly [-1, 1]^2."""
    r, th = np.sqrt(u * u + v * v), np.arctan2(v, u)
    if shape == "circle":
        return r <= 1
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "triangle":
        return _polygon(r, th, 3)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "star":  # radius alternates between 1 at the 5 tips and 0.4 between them
        tri = np.abs(np.mod((th + np.pi / 2) * 5 / (2 * np.pi), 1) * 2 - 1)
        return r <= 1 - 0.6 * tri
    if shape == "crescent":
        return (r <= 1) & ((u - 0.45) ** 2 + v * v >= 0.64)
    if shape == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.15
        return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0
    raise AssertionError(shape)


def _texture_mask(texture: str, x: np.ndarray, y: np.ndarray, period: float, phase: Sequence[float]) -> np.ndarray:
    """Boolean 'on' part of the fill pattern; x, y are (jitter-rotated) pixel coordinates."""
    a, b = 2 * np.pi * x / period + phase[0], 2 * np.pi * y / period + phase[1]
    if texture == "plain":
        return np.ones(x.shape, dtype=bool)
    if texture == "h-striped":
        return np.sin(b) > 0
    if texture == "v-striped":
        return np.sin(a) > 0
    if texture == "diagonal-striped":
        return np.sin((a + b) / math.sqrt(2)) > 0
    if texture == "checkered":
        return np.sin(a) * np.sin(b) > 0
    if texture == "dotted":
        return np.hypot(np.mod(a / (2 * np.pi), 1) - 0.5, np.mod(b / (2 * np.pi), 1) - 0.5) < 0.3
    raise AssertionError(texture)


class SyntheticShapes(Dataset):
    """Coloured, textured shapes on noisy backgrounds; deterministic from ``seed``, no download.

    Every class is a distinct (shape, fill texture, hue) triple, e.g. "red h-striped circle",
    drawn from ``len(SHAPES) x len(TEXTURES) x len(HUES)`` combinations in a seeded order, so
    several classes share a hue (or shape, or texture) and colour alone does not give the label.
    Within a class, images vary in position, scale (object 35-70% of the side), rotation,
    colour, texture period/phase/angle, background (muted colour, gradient, waves, noise) and an
    optional small grey distractor blob. Item ``index`` of a split is generated from
    ``np.random.default_rng([seed, split_id, index])``: identical regardless of access order or
    DataLoader workers, and different across splits. Class definitions depend only on ``seed``
    and ``num_classes``. Items are ``(uint8 tensor (3, H, W) RGB, label)`` with
    ``label = index % num_classes``; ``transform`` (if given) is applied to the tensor.
    """

    splits = ("train", "val", "test")

    def __init__(
        self,
        split: str = "train",
        num_classes: int = 10,
        images_per_class: int = 500,
        image_size: int = 72,
        seed: int = 0,
        transform: Callable[[torch.Tensor], Any] | None = None,
    ):
        if split not in self.splits:
            raise InputError(f"split must be one of {self.splits}, got {split!r}")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise InputError(
                f"num_classes must be between 2 and {MAX_CLASSES} "
                f"(distinct shape x texture x hue combinations), got {num_classes}"
            )
        if images_per_class < 1:
            raise InputError(f"images_per_class must be >= 1, got {images_per_class}")
        if image_size < 16:
            raise InputError(f"image_size must be >= 16, got {image_size}")
        if seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed}")
        self.split, self.num_classes, self.images_per_class = split, num_classes, images_per_class
        self.image_size, self.seed, self.transform = image_size, seed, transform

        combos = np.random.default_rng([seed, _CLASS_TAG]).permutation(MAX_CLASSES)[:num_classes]
        dims = (len(SHAPES), len(TEXTURES), len(HUES))
        self._attrs = [tuple(map(int, np.unravel_index(int(k), dims))) for k in combos]  # (s, t, h)
        self.classes = [f"{HUES[h][0]} {TEXTURES[t]} {SHAPES[s]}" for s, t, h in self._attrs]
        self.targets = [i % num_classes for i in range(len(self))]
        coords = np.arange(image_size, dtype=np.float32) + 0.5
        self._yy, self._xx = np.meshgrid(coords, coords, indexing="ij")

    def class_attributes(self, c: int) -> tuple[str, str, str]:
        """(shape, texture, hue name) defining class ``c``."""
        s, t, h = self._attrs[c]
        return SHAPES[s], TEXTURES[t], HUES[h][0]

    def __len__(self) -> int:
        return self.num_classes * self.images_per_class

    def __getitem__(self, index: SupportsInt) -> tuple[Any, int]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for dataset of length {len(self)}")
        index %= len(self)
        label = index % self.num_classes
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[self.split], index])
        image = torch.from_numpy(self._render(rng, *self._attrs[label]))
        return (self.transform(image) if self.transform is not None else image), label

    def _render(self, rng: np.random.Generator, shape: int, texture: int, hue: int) -> np.ndarray:
        # float32 grids and channel-first layout: ~4x faster than float64 / channel-last.
        n, xx, yy = self.image_size, self._xx, self._yy

        def colour(h: float, s: float, v: float) -> np.ndarray:
            return np.array(colorsys.hsv_to_rgb(h % 1, s, v), dtype=np.float32)[:, None, None]

        # Background: muted colour + linear gradient + low-frequency waves.
        ang = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(-0.25, 0.25) * ((math.cos(ang) * xx + math.sin(ang) * yy) / n - 0.5)
        for _ in range(2):
            f = rng.uniform(1, 4) * 2 * np.pi / n
            a2, p = rng.uniform(0, 2 * np.pi, 2).tolist()
            wave = np.sin(f * (math.cos(a2) * xx + math.sin(a2) * yy) + p)
            shade += rng.uniform(0, 0.07) * wave
        img = colour(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.3, 0.7)) + shade

        if rng.random() < 0.5:  # small grey distractor blob, drawn under the object
            c, rad = rng.uniform(0, n, 2).tolist(), (rng.uniform(0.05, 0.12, 2) * n).tolist()
            blob = ((xx - c[0]) / rad[0]) ** 2 + ((yy - c[1]) / rad[1]) ** 2 <= 1
            img[:, blob] = rng.uniform(0.3, 0.85)

        # Object: half-extent R in pixels, fully inside the image, rotated and slightly stretched.
        R = rng.uniform(0.35, 0.7) * n / 2
        cx, cy = rng.uniform(R, n - R, 2).tolist()
        rot, stretch = rng.uniform(-np.pi / 4, np.pi / 4), rng.uniform(0.9, 1.1)
        dx, dy = xx - cx, yy - cy
        cr, sr = math.cos(rot), math.sin(rot)
        u = (cr * dx + sr * dy) / (R * stretch)
        v = (cr * dy - sr * dx) * stretch / R
        obj = _shape_mask(SHAPES[shape], u, v)

        # Fill: texture in image coordinates (small angle jitter keeps h/v/diagonal distinct).
        t_ang = rng.uniform(-0.2, 0.2)
        ct, st = math.cos(t_ang), math.sin(t_ang)
        tx, ty = ct * xx + st * yy, ct * yy - st * xx
        period, phase = rng.uniform(n / 12, n / 7), rng.uniform(0, 2 * np.pi, 2).tolist()
        pattern = _texture_mask(TEXTURES[texture], tx, ty, period, phase)
        hue_jitter = rng.uniform(-0.02, 0.02)
        on = colour(HUES[hue][1] + hue_jitter, rng.uniform(0.65, 1), rng.uniform(0.75, 1))
        img = np.where(obj, np.where(pattern, on, on * rng.uniform(0.2, 0.4)), img)

        noise = rng.random(img.shape, dtype=np.float32) - 0.5
        img += noise * rng.uniform(0.05, 0.25)
        return (img * 255 + 0.5).clip(0, 255).astype(np.uint8)

"""`zf-prepare`: a one-time copy of an image tree with every short side resized to 256 (the paper's first step).

The paper's preprocessing resizes each image so that its short side is 256 before cropping; doing that once,
on disk, means training decodes ~2-3x fewer pixels per image and the pipeline's `Resize(256)` becomes a no-op
(torchvision returns an image already at the requested size unchanged). Train on the copy with
`data.root=<DST>`: the crops equal those from the original up to JPEG re-encoding error.

- Every image file under SRC (ImageNet's ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, or any tree of
  images) is written to the same relative path under DST. Hidden folders and non-image files are left out.
- An image whose short side is above `size` is resized as the training pipeline would (torchvision's
  antialiased bilinear `Resize(size)` on the uint8 image, long side ``int(size * long / short)``) and written
  as RGB: JPEG at `quality` (PNG for a ``.png`` file). An image whose short side is already `size` or less is
  never upscaled: its file is copied byte for byte.
- Each file is written to a temporary name in its folder and renamed, so a killed run never leaves a
  truncated image; files already in DST are skipped, so running again resumes.
- Unreadable files are reported (and listed in ``DST/zf_prepare_bad_images.jsonl``), not fatal; they are
  not copied.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.transforms.v2 import functional as F

from zf_lightning.data.image_files import BadImageLog, load_rgb
from zf_lightning.utils.io import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
BAD_IMAGE_LOG = "zf_prepare_bad_images.jsonl"


class PrepareError(ValueError):
    """Bad arguments (missing SRC, DST inside SRC...), raised before any file is written."""


@dataclass
class PrepareCounts:
    total: int = 0
    resized: int = 0
    copied: int = 0  # short side already <= size: copied unchanged
    done_before: int = 0  # already in DST (a resumed run)
    bad: int = 0
    bad_files: list[str] = field(default_factory=list)

    def line(self) -> str:
        done = self.resized + self.copied + self.done_before + self.bad
        return (
            f"{done}/{self.total} images: {self.resized} resized, {self.copied} copied (short side <= size), "
            f"{self.done_before} already done, {self.bad} unreadable"
        )


def check_paths(src: str | Path, dst: str | Path) -> tuple[Path, Path]:
    """Resolved (src, dst); PrepareError if SRC is missing or the two trees overlap."""
    src, dst = Path(src).expanduser().resolve(), Path(dst).expanduser().resolve()
    if not src.is_dir():
        raise PrepareError(f"SRC {src} does not exist or is not a directory")
    if dst == src:
        raise PrepareError(f"DST is SRC ({src}): the copy must go to another folder")
    if src in dst.parents:
        raise PrepareError(f"DST {dst} is inside SRC {src}: the copy would be read as part of the source")
    if dst in src.parents:
        raise PrepareError(f"SRC {src} is inside DST {dst}: give a DST outside the source tree")
    if dst.exists() and not dst.is_dir():
        raise PrepareError(f"DST {dst} exists and is not a directory")
    return src, dst


def list_images(src: Path) -> list[Path]:
    """Image files under `src`, relative, sorted; hidden folders and files are skipped."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(folder).relative_to(src)
        found += [
            base / name
            for name in sorted(files)
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return found


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the short side `size` and the long side as torchvision's Resize(size) computes it."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def prepare_one(src: Path, dst: Path, rel: Path, size: int, quality: int, log_path: Path | None) -> str:
    """Write DST/rel from SRC/rel; returns "resized", "copied", "done_before" or "bad"."""
    target = dst / rel
    if target.exists():
        return "done_before"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller reports bad files
        image = load_rgb(src / rel, on_bad_image="skip", log=BadImageLog(log_path))
    if image is None:
        return "bad"
    if min(image.size) <= size:
        atomic_write(target, lambda path: shutil.copyfile(src / rel, path))
        return "copied"
    width, height = resized_size(*image.size, size)
    pixels = F.resize(F.pil_to_tensor(image), [height, width], antialias=True)  # as the pipeline's Resize(size)
    resized = F.to_pil_image(pixels)
    if rel.suffix.lower() == ".png":
        atomic_write(target, lambda path: resized.save(path, "PNG"))
    else:
        atomic_write(target, lambda path: resized.save(path, "JPEG", quality=quality))
    return "resized"


def _init_worker() -> None:
    torch.set_num_threads(1)  # one process per core


def _prepare_star(args: tuple[Path, Path, Path, int, int, Path | None]) -> tuple[Path, str]:
    return args[2], prepare_one(*args)


def prepare(
    src: str | Path, dst: str | Path, size: int = 256, workers: int = 1, quality: int = 95, progress: bool = True
) -> PrepareCounts:
    """Write the short-side-`size` copy of the image tree `src` to `dst` (see the module docstring)."""
    if size < 1:
        raise PrepareError(f"--size must be >= 1, got {size}")
    if not 1 <= quality <= 100:
        raise PrepareError(f"--quality must be in 1..100, got {quality}")
    if workers < 1:
        raise PrepareError(f"--workers must be >= 1, got {workers}")
    src, dst = check_paths(src, dst)
    files = list_images(src)
    if not files:
        raise PrepareError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found under {src}")
    dst.mkdir(parents=True, exist_ok=True)
    log_path = dst / BAD_IMAGE_LOG
    counts = PrepareCounts(total=len(files))
    jobs = [(src, dst, rel, size, quality, log_path) for rel in files]
    started = last = time.perf_counter()
    tty = progress and sys.stderr.isatty()

    def report(final: bool = False) -> None:
        rate = (counts.resized + counts.copied) / max(time.perf_counter() - started, 1e-9)
        text = f"zf-prepare: {counts.line()} ({rate:.0f} written/s)"
        if tty:
            print(f"\r{text}", end="\n" if final else "", file=sys.stderr, flush=True)
        elif progress:
            print(text, file=sys.stderr, flush=True)

    def update(rel: Path, outcome: str) -> None:
        nonlocal last
        setattr(counts, outcome, getattr(counts, outcome) + 1)
        if outcome == "bad":
            counts.bad_files.append(str(src / rel))
        now = time.perf_counter()
        if progress and now - last >= (0.5 if tty else 10.0):
            last = now
            report()

    if workers == 1:
        for job in jobs:
            update(*_prepare_star(job))
    else:
        # spawn, not fork: a fork of a process with threads (torch's, a logger's) can deadlock on a lock they held
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for rel, outcome in pool.imap_unordered(_prepare_star, jobs, chunksize=16):
                update(rel, outcome)
    if progress:
        report(final=True)
    return counts

"""ImageNet training images that are near-duplicates of transfer-set images (Caltech-101/256), to leave out.

The paper removed such images from ImageNet's training set so that the transfer numbers are not measured on
images the network was trained on. A copy found on the web is typically resized, re-encoded as JPEG at another
quality and slightly cropped; this module finds those copies with a perceptual hash.

**Hash.** A 143-bit DCT hash (pHash-like) of a 32x32 grayscale thumbnail of a window of the image: the 12x12
lowest 2-D DCT frequencies less the constant term, in two bands each set to 1 where a coefficient is above the
band's median: 63 bits of the 8x8 lowest frequencies (word 0) and 80 bits of the next ones (words 1-2). Low
frequencies survive resizing and JPEG re-encoding; the median makes each band half ones, whatever the contrast.

**Crops.** A crop of 5 % moves the picture by up to 5 % of the side, which flips many bits of a plain pHash
(measured: up to half of the 63 bits of a 5 % corner crop). So both copies are hashed on windows meant to cover
the same part of the scene: an ImageNet image on its centre 90 % (`IMAGENET_WINDOW`), which lies inside any
copy cropped by at most 5 % per side, and a transfer image on 25 windows (`TRANSFER_WINDOWS` per axis, all
pairs) placed where that centre lands when either copy is the cropped one; the distance of a pair is the
smallest over those windows.

**Matching.** Coarse to fine, with numpy uint64 XOR + `np.bitwise_count`, in batches: a screen on word 0 in 4 of
the windows (`SCREEN_VIEWS`, distance <= `SCREEN_THRESHOLD` of 63) keeps 1-2 % of the pairs, then the whole hash
in all 25 windows decides (distance <= `DEFAULT_THRESHOLD` of 143). Both run inside the DataLoader workers, right
after decoding, so the lookup is spread over the workers like the decoding. A uniform image (blank, one colour)
has no pattern to hash and is left out (see `HashAndMatch`).

**Threshold.** Measured on photograph-like test images (100) and 200x150 crops of real photographs (68), each
copied 6 times resized 0.5-1.5x, re-encoded at JPEG quality 30-95 and cropped by exactly 5 % on one or both axes
(either copy the cropped one): duplicates at 143-bit distance <= 24 (photograph-like) and <= 32 for 99 % of the
real crops (the others, up to 46, are near-uniform sky); distinct images at >= 40 (0.1 % below 44, mean 63).
If the bits of distinct images were independent coin flips, a threshold of 32 would pass about 13 of
ImageNet x Caltech-101/256's 5e10 pairs (25 windows each); real images are more alike than coin flips, so expect
more. A false match costs one training image out of 1.28 M, a missed copy contaminates a transfer result, hence
a threshold at the duplicates' edge rather than the distinct images'. The .csv lists every pair with its
distance to check the borderline ones. Not found: mirrored copies, crops well over 5 %, near-uniform images.

**Speed.** Each ImageNet image is decoded once, by libjpeg at 1/2 to 1/8 size and luminance only (PIL's
`Image.draft`), into one 32x32 thumbnail: about 1 ms for a 500x375 JPEG, against about 3 ms for the full
decode, resize and crop of a training epoch (one core, measured). The lookup against Caltech-101 + 256's ~40 k
images (4 x 40 k screen words, then the 1-2 % screened pairs in full) adds about 0.5 ms per image, in the same
workers. So with 16 workers ImageNet's 1.28 M training images take about 2 minutes of CPU-bound work, less than
one epoch's decoding (about 4 minutes), unless reading the files from disk is slower.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy.fft import dctn
from torch.utils.data import DataLoader, Dataset

from zf_lightning.data.image_files import DECODE_ERRORS, check_truncation_detected
from zf_lightning.data.imagenet_folder import ImageNetFolder
from zf_lightning.data.user_images import list_images
from zf_lightning.utils.errors import InputError, MissingInputError
from zf_lightning.utils.io import atomic_write_bytes
from zf_lightning.utils.progress import track_images

THUMBNAIL = 32  # side of the grayscale thumbnail that is hashed
COARSE_BAND = 8  # word 0: the 8x8 lowest frequencies less the constant term (63 bits)
FINE_BAND = 12  # words 1-2: the rest of the 12x12 lowest frequencies (80 bits)
HASH_BITS = FINE_BAND * FINE_BAND - 1  # 143
HASH_WORDS = 3

# A window along one axis: (size, offset) as fractions of the side.
Window = tuple[float, float]
IMAGENET_WINDOW: Window = (0.9, 0.05)
# Where an ImageNet copy's centre 90 % lies in the transfer image: the same window (same framing), inside a
# 95 % window when the ImageNet copy is the larger one, down to 86 % of the side when it is cropped 5 %.
TRANSFER_WINDOWS: tuple[Window, ...] = ((0.95, 0.0), (0.95, 0.05), (0.9, 0.05), (0.86, 0.05), (0.86, 0.09))
TRANSFER_VIEWS: tuple[tuple[Window, Window], ...] = tuple((x, y) for x in TRANSFER_WINDOWS for y in TRANSFER_WINDOWS)
SCREEN_VIEWS: tuple[int, ...] = tuple(
    TRANSFER_VIEWS.index((x, y))
    for x in (TRANSFER_WINDOWS[0], TRANSFER_WINDOWS[-1])
    for y in (TRANSFER_WINDOWS[0], TRANSFER_WINDOWS[-1])
)
# Duplicates measured at <= 20 of the 63 coarse bits in one of the screen views; 1-2 % of distinct pairs pass.
SCREEN_THRESHOLD = 20
DEFAULT_THRESHOLD = 32  # of HASH_BITS; see the module's docstring
UNIFORM_STD = 2.0  # of 255: a thumbnail this flat holds JPEG noise, no pattern
PAIRS_HEADER = ("imagenet_path", "transfer_path", "distance")


def _band_masks() -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.indices((FINE_BAND, FINE_BAND))
    coarse = (rows < COARSE_BAND) & (cols < COARSE_BAND)
    constant = (rows == 0) & (cols == 0)
    return (coarse & ~constant).ravel(), (~coarse).ravel()


COARSE_MASK, FINE_MASK = _band_masks()


def dct_hashes(thumbnails: np.ndarray) -> np.ndarray:
    """(..., 32, 32) grayscale thumbnails -> (..., 3) uint64 hashes (see the module's docstring).

    Bits 0-62 of word 0 are the coarse band, bits 0-79 of words 1-2 the fine band; the others are 0, so a Hamming
    distance counts the bits of both bands."""
    coefficients = dctn(np.asarray(thumbnails, np.float32), axes=(-2, -1), norm="ortho")
    lowest = coefficients[..., :FINE_BAND, :FINE_BAND].reshape(*coefficients.shape[:-2], FINE_BAND * FINE_BAND)
    bits = np.zeros((*lowest.shape[:-1], 64 * HASH_WORDS), bool)
    for mask, start in ((COARSE_MASK, 0), (FINE_MASK, 64)):
        band = lowest[..., mask]
        bits[..., start : start + band.shape[-1]] = band > np.median(band, axis=-1, keepdims=True)
    packed = np.packbits(bits, axis=-1, bitorder="little")  # 8 bytes per word, least significant bit first
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64)


def _to_gray(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):  # 16-bit grayscale: keep the high byte (convert("L") would clip at 255)
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8))
    return image.convert("L")


def thumbnails(path: str | Path, views: Sequence[tuple[Window, Window]]) -> np.ndarray:
    """(len(views), 32, 32) float32 grayscale thumbnails of the image's windows `views` ((x, y) windows).

    A JPEG is decoded by libjpeg straight to 1/2, 1/4 or 1/8 size (at least 64 px a side) and luminance only
    (`Image.draft`): several times faster than a full decode, and still twice the thumbnail's resolution, which
    the box filter averages down without aliasing. Raises what PIL raises for an unreadable file."""
    with Image.open(path) as image:
        image.draft("L", (2 * THUMBNAIL, 2 * THUMBNAIL))
        image.load()  # Image.open only reads the header; a truncated body fails here
        gray = _to_gray(image)
    width, height = gray.size
    out = np.empty((len(views), THUMBNAIL, THUMBNAIL), np.float32)
    for n, ((x_size, x_offset), (y_size, y_offset)) in enumerate(views):
        box = (x_offset * width, y_offset * height, (x_offset + x_size) * width, (y_offset + y_size) * height)
        out[n] = np.asarray(gray.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX, box=box), np.float32)
    return out


@dataclass
class TransferIndex:
    """The transfer images' hashes: `hashes[i, v]` is image `paths[i]` in view `TRANSFER_VIEWS[v]`; `screen[s]` is
    word 0 of every image in screen view `SCREEN_VIEWS[s]`, one row per view so that the screen reads memory in
    order (numpy is slow at reducing short inner axes)."""

    paths: list[str]
    hashes: np.ndarray  # (M, len(TRANSFER_VIEWS), HASH_WORDS) uint64
    screen: np.ndarray = field(init=False)  # (len(SCREEN_VIEWS), M) uint64

    def __post_init__(self) -> None:
        self.screen = np.ascontiguousarray(self.hashes[:, list(SCREEN_VIEWS), 0].T)


def find_matches(
    queries: np.ndarray,
    index: TransferIndex,
    threshold: int = DEFAULT_THRESHOLD,
    screen_threshold: int = SCREEN_THRESHOLD,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query rows, transfer rows, distances) of every pair within `threshold` bits, for (B, 3) query hashes.

    The screen compares word 0 with `index.screen`, `chunk` transfer images at a time into reused buffers (a few
    MB, in cache); the pairs it keeps are compared in full, in every view, and the smallest distance counts."""
    coarse = np.ascontiguousarray(queries[:, 0])[:, None]
    shape = (len(queries), min(chunk, len(index.paths)))
    xor, count, nearest = np.empty(shape, np.uint64), np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    rows, cols = [np.zeros(0, np.intp)], [np.zeros(0, np.intp)]
    for start in range(0, len(index.paths), chunk):
        n = min(chunk, len(index.paths) - start)
        for view, words in enumerate(index.screen[:, start : start + n]):
            np.bitwise_xor(coarse, words[None], out=xor[:, :n])
            np.bitwise_count(xor[:, :n], out=nearest[:, :n] if view == 0 else count[:, :n])
            if view:
                np.minimum(nearest[:, :n], count[:, :n], out=nearest[:, :n])
        row, col = np.nonzero(nearest[:, :n] <= screen_threshold)
        rows.append(row)
        cols.append(col + start)
    row, col = np.concatenate(rows), np.concatenate(cols)
    differing = np.bitwise_count(index.hashes[col] ^ queries[row][:, None, :])  # (pairs, views, words)
    distance = differing.sum(axis=2, dtype=np.int64).min(axis=1, initial=HASH_BITS + 1)
    keep = distance <= threshold
    return row[keep], col[keep], distance[keep]


class HashedBatch(NamedTuple):
    """What a loader worker sends back for a batch of images (indices into the dataset's files)."""

    indices: np.ndarray  # every image of the batch (its length is what the progress bar counts)
    hashed: np.ndarray  # those hashed, in the order of `hashes`
    hashes: np.ndarray | None  # (len(hashed), views, 3) of transfer images; None when matched in the worker
    unreadable: list[tuple[int, str]]  # (index, reason)
    uniform: np.ndarray  # readable, but without a pattern to hash
    matches: tuple[np.ndarray, np.ndarray, np.ndarray]  # (image index, transfer row, distance)


class Thumbnails(Dataset):
    """(index, thumbnails in `views` or None, why not) of each file: a file that cannot be read is reported, not
    raised, so that one bad image does not end a pass over 1.28 M."""

    def __init__(self, files: Sequence[str | Path], views: Sequence[tuple[Window, Window]]) -> None:
        self.files, self.views = [str(f) for f in files], tuple(views)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str]:
        path = self.files[index]
        try:
            return index, thumbnails(path, self.views), ""
        except DECODE_ERRORS as error:
            reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                reason = "empty file (0 bytes)"
            return index, None, reason


class HashAndMatch:
    """The loaders' collate_fn: hashes a batch in the worker and, given an `index`, matches it there too, so that
    hashing and lookup scale with the workers and only the few matches travel back.

    An image whose first view is uniform (standard deviation under `UNIFORM_STD` of 255: blank, or one colour) is
    not hashed: its DCT is all zeros but the constant term, so its bits would say nothing, and any two such images
    would match whatever their colours."""

    def __init__(
        self,
        views: int,
        index: TransferIndex | None = None,
        threshold: int = DEFAULT_THRESHOLD,
        screen_threshold: int = SCREEN_THRESHOLD,
    ) -> None:
        self.views, self.index = views, index
        self.threshold, self.screen_threshold = threshold, screen_threshold

    def __call__(self, items: list[tuple[int, np.ndarray | None, str]]) -> HashedBatch:
        indices = np.array([index for index, _, _ in items], np.int64)
        unreadable = [(index, reason) for index, thumbs, reason in items if thumbs is None]
        decoded = [(index, thumbs) for index, thumbs, _ in items if thumbs is not None]
        readable = np.array([index for index, _ in decoded], np.int64)
        if decoded:
            stacked = np.stack([thumbs for _, thumbs in decoded])
        else:
            stacked = np.zeros((0, self.views, THUMBNAIL, THUMBNAIL), np.float32)
        uniform = stacked[:, 0].std(axis=(-2, -1)) < UNIFORM_STD
        hashes = dct_hashes(stacked[~uniform])
        hashed = readable[~uniform]
        if self.index is None:
            empty = np.zeros(0, np.int64)
            return HashedBatch(indices, hashed, hashes, unreadable, readable[uniform], (empty, empty, empty))
        row, col, distance = find_matches(hashes[:, 0], self.index, self.threshold, self.screen_threshold)
        return HashedBatch(indices, hashed, None, unreadable, readable[uniform], (hashed[row], col, distance))


@dataclass
class Overlap:
    """What `find_overlap` found: pairs (ImageNet path relative to its root, transfer path, distance), sorted, and
    the images that could not take part (unreadable, or uniform: see `HashAndMatch`)."""

    pairs: list[tuple[str, str, int]]
    imagenet_images: int
    transfer_images: int
    unreadable: list[str]
    uniform: list[str]
    threshold: int

    @property
    def duplicates(self) -> list[str]:
        """The ImageNet training files to leave out, sorted."""
        return sorted({imagenet for imagenet, _, _ in self.pairs})


def check_imagenet_root(root: str | Path) -> Path:
    """`root`, if it holds a `train` folder; else `MissingInputError` naming the path and the layout."""
    root = Path(root).expanduser()
    expected = f"expected ImageNet's training images in {root}/train/<wnid>/*.JPEG"
    if not root.is_dir():
        raise MissingInputError(f"ImageNet root {root} does not exist or is not a directory; {expected}")
    if not (root / "train").is_dir():
        raise MissingInputError(f"ImageNet root {root} has no train folder; {expected}")
    return root


def imagenet_training_files(root: str | Path, cache_dir: str | Path | None = None) -> list[str]:
    """The training images of an ImageNet root as the ImageNet datamodule lists them (`ImageNetFolder`, whose
    file-list cache it shares), relative to the root: `train/<wnid>/<file>`."""
    root = check_imagenet_root(root)
    samples = ImageNetFolder(root, "train", cache_dir=cache_dir).samples
    prefix = os.path.join(root, "")  # every sample's path starts with it (string work: 1.28 M of them)
    return [path[len(prefix) :] for path, _ in samples]


def transfer_files(roots: Sequence[str | Path], imagenet_root: str | Path) -> list[Path]:
    """Every image file under the transfer roots (recursively), each root checked first."""
    imagenet_train = (Path(imagenet_root).expanduser() / "train").resolve()
    files: list[Path] = []
    for given in roots:
        root = Path(given).expanduser()
        if not root.is_dir():
            raise MissingInputError(
                f"transfer root {root} does not exist or is not a directory; expected a folder holding a transfer "
                "set's images, searched recursively (e.g. <data>/caltech101/101_ObjectCategories)"
            )
        resolved = root.resolve()
        if resolved == imagenet_train or imagenet_train in resolved.parents or resolved in imagenet_train.parents:
            raise InputError(
                f"transfer root {root} overlaps the ImageNet training folder {imagenet_train}: every image would "
                "match itself; expected a transfer set outside the ImageNet root"
            )
        try:
            files.extend(list_images(root, recursive=True))
        except MissingInputError:
            raise MissingInputError(
                f"transfer root {root} holds no image files; expected images (.jpg, .png, ...) in it or its sub-folders"
            ) from None
    return files


def _batches(
    files: Sequence[str | Path],
    views: Sequence[tuple[Window, Window]],
    collate: HashAndMatch,
    workers: int,
    batch_size: int,
    description: str,
    progress: bool,
) -> Iterator[HashedBatch]:
    loader = DataLoader(Thumbnails(files, views), batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return track_images(loader, description, total=len(files)) if progress else iter(loader)


@dataclass
class _Skipped:
    unreadable: list[str] = field(default_factory=list)
    uniform: list[str] = field(default_factory=list)

    def add(self, batch: HashedBatch, files: Sequence[str | Path]) -> None:
        for index, reason in batch.unreadable:
            warnings.warn(f"skipping unreadable image {files[index]}: {reason}", stacklevel=4)
            self.unreadable.append(str(files[index]))
        self.uniform.extend(str(files[index]) for index in batch.uniform)


def hash_transfer_images(
    files: Sequence[str | Path], workers: int = 0, batch_size: int = 64, progress: bool = True
) -> tuple[TransferIndex, list[str], list[str]]:
    """The index of the transfer images' hashes in `TRANSFER_VIEWS`; the unreadable files (warned about) and the
    uniform ones, both left out of the index."""
    paths: list[str] = []
    hashes = [np.zeros((0, len(TRANSFER_VIEWS), HASH_WORDS), np.uint64)]
    skipped = _Skipped()
    collate = HashAndMatch(len(TRANSFER_VIEWS))
    for batch in _batches(files, TRANSFER_VIEWS, collate, workers, batch_size, "hashing transfer images", progress):
        skipped.add(batch, files)
        paths.extend(str(files[index]) for index in batch.hashed)
        assert batch.hashes is not None  # hashes come back when there is no index to match against
        hashes.append(batch.hashes)
    return TransferIndex(paths, np.concatenate(hashes)), skipped.unreadable, skipped.uniform


def find_overlap(
    imagenet_root: str | Path,
    transfer_roots: Sequence[str | Path],
    threshold: int = DEFAULT_THRESHOLD,
    workers: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> Overlap:
    """Every pair (ImageNet training image, transfer image) within `threshold` bits of each other.

    The roots are checked before any image is read (`InputError`/`MissingInputError` naming the path and the
    expected layout); the ImageNet file list is the ImageNet datamodule's (cached in `cache_dir`). Unreadable images
    are skipped with a warning naming them and listed in the result, as are uniform ones. Transfer paths are
    absolute; ImageNet paths relative to its root, as `data.exclude` reads them.
    """
    if not 0 <= threshold <= HASH_BITS:
        raise InputError(f"threshold={threshold}: expected a Hamming distance from 0 to {HASH_BITS} (bits)")
    if batch_size < 1 or workers < 0:
        raise InputError(f"expected batch_size >= 1 and workers >= 0, got {batch_size} and {workers}")
    check_truncation_detected()
    imagenet_root = check_imagenet_root(imagenet_root)
    transfer = [path.resolve() for path in transfer_files(transfer_roots, imagenet_root)]
    imagenet = imagenet_training_files(imagenet_root, cache_dir)

    index, unreadable, uniform = hash_transfer_images(transfer, workers, batch_size, progress)
    skipped = _Skipped(unreadable, uniform)
    pairs: list[tuple[str, str, int]] = []
    files = [os.path.join(imagenet_root, path) for path in imagenet]
    view = ((IMAGENET_WINDOW, IMAGENET_WINDOW),)
    collate = HashAndMatch(1, index, threshold)
    if index.paths:  # else nothing can match: ImageNet need not be read
        for batch in _batches(files, view, collate, workers, batch_size, "matching ImageNet training images", progress):
            skipped.add(batch, files)
            pairs.extend((imagenet[i], index.paths[j], int(d)) for i, j, d in zip(*batch.matches))
    pairs.sort()
    return Overlap(pairs, len(imagenet), len(transfer), skipped.unreadable, skipped.uniform, threshold)


def pairs_path(out: str | Path) -> Path:
    """Where the pairs of the list `out` go: beside it, suffix .csv."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        raise InputError(f"--out {out}: expected a list file not ending in .csv (the pairs go beside it, in a .csv)")
    return out.with_suffix(".csv")


def write_overlap(overlap: Overlap, out: str | Path) -> tuple[Path, Path]:
    """Write the ImageNet files to leave out to `out` (one path a line, relative to the ImageNet root, sorted)
    and the pairs to `out` with suffix .csv; both atomically. Returns the two paths."""
    out = Path(out).expanduser()
    csv_path = pairs_path(out)
    atomic_write_bytes("".join(f"{path}\n" for path in overlap.duplicates).encode(), out)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PAIRS_HEADER)
    writer.writerows(overlap.pairs)
    atomic_write_bytes(text.getvalue().encode(), csv_path)
    return out, csv_path


def read_exclude_list(path: str | Path) -> list[str]:
    """The paths of a list `zf-overlap` wrote (one a line, relative to the ImageNet root; blank lines ignored).

    A missing file, or a line that is not a relative path inside the root, fails naming it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingInputError(
            f"data.exclude={str(path)!r}: no such file; expected a list of ImageNet training files to leave out, "
            "one path a line relative to data.root (as zf-overlap writes it)"
        )
    listed = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.strip()
        if not entry:
            continue
        if Path(entry).is_absolute() or ".." in Path(entry).parts:
            raise InputError(
                f"data.exclude={str(path)!r}, line {number}: {entry!r} is not a path relative to data.root; "
                "expected e.g. train/n01440764/n01440764_10026.JPEG"
            )
        listed.append(Path(entry).as_posix())
    return listed

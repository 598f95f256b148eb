"""Reading image files so that one bad file never ends a long run.

`load_rgb` decodes a file fully and returns it as an RGB PIL image. A file it cannot read (zero bytes, not an
image, truncated) is skipped with a warning (`on_bad_image="skip"`, returns None) or fails naming the file
(`on_bad_image="error"`); other modes (grayscale, palette, CMYK, RGBA, 16-bit) are converted, and an image
smaller than the crop is used as it is (the pipeline upscales it). Each of these events is recorded once per
file in a `BadImageLog` (a .jsonl file shared by DataLoader workers), which `summarize_bad_images` turns into
the counts and file lists of a run's summary.

Datasets call `load_rgb` from a `load_item(index)` method that returns None for a skipped file, and take the
next readable item in its place (`first_readable`), so batches keep their size and the choice is deterministic.
"""

from __future__ import annotations

import json
import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Subset

from zf_lightning.data.jpeg import DEVICE_FRAMES, EncodedJPEG, jpeg_frame
from zf_lightning.utils.errors import InputError

ON_BAD_IMAGE = ("skip", "error")
KINDS = ("skipped", "converted", "small")
# How many bad files in a row are skipped before giving up: beyond that, something is wrong with the
# dataset as a whole (an unmounted disk, a wrong root), not with one file.
MAX_CONSECUTIVE_BAD = 50
# What PIL raises for a file it cannot decode: OSError (truncated, unidentified, unreadable), SyntaxError
# (broken PNG/GIF headers), ValueError, EOFError, IndexError and struct.error (truncated or malformed
# headers), decompression bombs. Anything else (a bug, MemoryError, KeyboardInterrupt) is not the file's fault.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)

# torchvision 0.29 deprecates torchvision.io's decoders (for TorchCodec) but keeps them; the dependency is bounded
# below their removal, and the decode=torchvision / decode=gpu tests fail the day they break. No warning per image.
warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision are deprecated",
    category=DeprecationWarning,
)


class BadImageError(ValueError):
    """An image file that cannot be read, with `data.on_bad_image=error`."""


def check_on_bad_image(on_bad_image: str) -> str:
    if on_bad_image not in ON_BAD_IMAGE:
        raise InputError(f"data.on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}")
    return on_bad_image


def check_truncation_detected() -> None:
    """Datasets call this when built: with PIL's LOAD_TRUNCATED_IMAGES on, a truncated file would decode
    without error, its missing rows filled with grey, and be trained on."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images cannot be detected; "
            "leave it False (data.on_bad_image=skip skips truncated files)"
        )


class BadImageLog:
    """Appends one JSON line {"path", "kind", "reason"} per bad-image event to `path` (None: record nothing).

    Each line is one `write` to a file opened in append mode, so DataLoader workers (and DDP ranks) can share
    the file. A file is written once per kind (twice at most when two workers meet it at the same moment): a
    process reads what is already there before its first write (a copy sent to a new worker starts empty), so
    re-reading the same bad file every epoch does not grow the log.
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path).expanduser() if path else None
        self._seen: set[tuple[str, str]] | None = None  # (path, kind) already in the file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_seen": None}  # a worker re-reads the file: other workers may have added lines

    def __repr__(self) -> str:
        return f"BadImageLog({str(self.path) if self.path else None!r})"

    def record(self, path: str | Path, kind: str, reason: str) -> bool:
        """Append the event unless this file was already recorded with this kind; True if it is new."""
        if kind not in KINDS:
            raise InputError(f"bad-image kind must be one of {list(KINDS)}, got {kind!r}")
        if self._seen is None:
            self._seen = {(e["path"], e["kind"]) for e in read_bad_image_log(self.path)} if self.path else set()
        key = (str(path), kind)
        if key in self._seen:
            return False
        self._seen.add(key)
        if self.path is not None:
            line = json.dumps({"path": str(path), "kind": kind, "reason": reason}) + "\n"
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # One os.write of the whole line on an O_APPEND descriptor: lines of several processes never interleave.
                # 0o666: the umask decides, as for the files of `atomic_write` (a shared log under umask 002).
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)
            except OSError as error:  # an unwritable log must not end the run either
                warnings.warn(
                    f"could not write the bad-image log {self.path} ({error}); bad images are only warned about "
                    "from now on",
                    stacklevel=3,
                )
                self.path = None
        return True


def as_bad_image_log(log: BadImageLog | str | Path | None) -> BadImageLog:
    """A `BadImageLog` from a log, a .jsonl path or None (warnings only)."""
    return log if isinstance(log, BadImageLog) else BadImageLog(log)


def read_bad_image_log(path: str | Path | None) -> list[dict[str, str]]:
    """The events of a bad-image log; a missing file has none, and a torn or foreign line is ignored."""
    if path is None or not Path(path).is_file():
        return []
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # e.g. the last line of a process killed mid-write
            if isinstance(event, dict) and event.get("kind") in KINDS and isinstance(event.get("path"), str):
                events.append(event)
    return events


def summarize_bad_images(path: str | Path | None) -> dict[str, Any]:
    """{"skipped": n, "converted": n, "small": n, "files": {kind: sorted paths}}: files counted once per kind."""
    files: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for event in read_bad_image_log(path):
        files[event["kind"]].add(event["path"])
    return {**{kind: len(files[kind]) for kind in KINDS}, "files": {kind: sorted(files[kind]) for kind in KINDS}}


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit grayscale PNGs ("I;16", "I;16B", or "I" in older Pillow): keep the high byte. PIL's own
        # convert("RGB") clips at 255 instead, which turns almost every pixel white.
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8)).convert("RGB")  # a 2-D uint8 array is mode L
    return image.convert("RGB")  # also what torchvision's pil_loader does: RGB in, identical RGB out


def load_rgb(
    path: str | Path,
    on_bad_image: str = "skip",
    log: BadImageLog | None = None,
    min_size: int | None = None,
    draft_size: int | None = None,
) -> Image.Image | None:
    """The image at `path` as RGB, decoded in full now; None if it is unreadable and `on_bad_image="skip"`.

    With `draft_size`, a JPEG is decoded straight to a reduced size (libjpeg's DCT scaling by 1/2, 1/4 or
    1/8, PIL's `Image.draft`) whose short side is still at least `draft_size`; an image whose short side is
    under 2 * `draft_size`, and any other format, is decoded at full size. PIL picks the largest factor
    s <= min(w // draft_size, h // draft_size) and returns ceil(w / s) x ceil(h / s), so the short side
    never drops below `draft_size`.

    Non-RGB images are converted (recorded as "converted"); an image whose short side is under `min_size`
    (the crop) is returned as it is (recorded as "small"). An unreadable file is recorded as "skipped" and
    warned about, or raises `BadImageError` naming it with `on_bad_image="error"`.
    """
    check_on_bad_image(on_bad_image)
    log = log if log is not None else BadImageLog(None)
    try:
        with Image.open(path) as image:
            if draft_size is not None and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.load()  # Image.open only reads the header; a truncated body fails here
            mode = image.mode
            rgb = _to_rgb(image)
    except DECODE_ERRORS as error:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            reason = "empty file (0 bytes)"
        if on_bad_image == "error":
            raise BadImageError(
                f"cannot read image {path}: {reason}. data.on_bad_image=skip would skip it "
                f"(and list it in the run summary)"
            ) from error
        if log.record(path, "skipped", reason):
            warnings.warn(f"skipping unreadable image {path}: {reason}", stacklevel=2)
        return None
    if mode != "RGB":
        log.record(path, "converted", f"mode {mode} converted to RGB")
    if min_size is not None and min(rgb.size) < min_size:
        log.record(path, "small", f"{rgb.width}x{rgb.height} is smaller than the {min_size}px crop; upscaled")
    return rgb


def load_rgb_tensor(
    path: str | Path, on_bad_image: str = "skip", log: BadImageLog | None = None, min_size: int | None = None
) -> torch.Tensor | Image.Image | None:
    """The image at `path` as a uint8 (3, H, W) tensor from torchvision's decoder (libjpeg-turbo, libpng): no
    PIL image in between, and no copy into a tensor afterwards.

    Only plain, whole 3-channel files take this path; anything else (grayscale, CMYK, 16-bit, a JPEG without
    its end marker, i.e. truncated, which libjpeg would fill in with grey instead of failing, or an error) goes
    through `load_rgb`, which converts, records and skips exactly as with PIL.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image, read_file

    log = log if log is not None else BadImageLog(None)
    try:
        data = read_file(str(path))
        is_jpeg = data.numel() >= 4 and data[:2].tolist() == [0xFF, 0xD8]
        if is_jpeg and data[-2:].tolist() != [0xFF, 0xD9]:
            return load_rgb(path, on_bad_image, log, min_size)
        image = decode_image(data, mode=ImageReadMode.UNCHANGED)
    except (RuntimeError, ValueError, OSError):
        return load_rgb(path, on_bad_image, log, min_size)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        return load_rgb(path, on_bad_image, log, min_size)
    if min_size is not None and min(image.shape[1:]) < min_size:
        log.record(path, "small", f"{image.shape[2]}x{image.shape[1]} is smaller than the {min_size}px crop; upscaled")
    return image


def first_readable(load_item: Callable[[int], Any | None], index: int, length: int, what: str = "dataset") -> Any:
    """`load_item(index)`, or if that is None (a skipped file) the next item that loads, wrapping around.

    The substitute is always the same for an index, so runs stay deterministic. After MAX_CONSECUTIVE_BAD
    bad files in a row the dataset itself is taken to be broken.
    """
    if not -length <= index < length:
        raise IndexError(f"index {index} out of range for a {what} of {length} items")
    index %= length
    tries = min(length, MAX_CONSECUTIVE_BAD)
    for step in range(tries):
        item = load_item((index + step) % length)
        if item is not None:
            return item
    raise RuntimeError(
        f"{what}: {tries} images in a row from item {index} could not be read (see the warnings and "
        f"data.bad_image_log); expected readable images: check data.root and the files"
    )


def read_for_device(
    path: str | Path, on_bad_image: str = "skip", log: BadImageLog | None = None, min_size: int | None = None
) -> EncodedJPEG | torch.Tensor | Image.Image | None:
    """An `EncodedJPEG` for a whole 8-bit, 3-channel baseline JPEG; otherwise what `load_rgb_tensor` returns
    (a decoded uint8 tensor or PIL image, or None for a skipped file)."""
    log = log if log is not None else BadImageLog(None)
    try:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    except OSError:
        return load_rgb_tensor(path, on_bad_image, log, min_size)  # reports the file as the other paths do
    frame = jpeg_frame(data)
    if frame is None or frame.marker not in DEVICE_FRAMES or frame.precision != 8 or frame.components != 3:
        return load_rgb_tensor(path, on_bad_image, log, min_size)
    if min_size is not None and min(frame.height, frame.width) < min_size:
        log.record(path, "small", f"{frame.width}x{frame.height} is smaller than the {min_size}px crop; upscaled")
    return EncodedJPEG(torch.frombuffer(data, dtype=torch.uint8), str(path))


class SkipBadImages:
    """Mixin for a dataset with `load_item(index) -> (image, target) | None`: a skipped item is replaced.

    Call `init_bad_images` in the dataset's constructor; `read_image` is `load_rgb` with its settings.
    """

    on_bad_image: str = "skip"
    bad_image_log: BadImageLog = BadImageLog(None)
    min_size: int | None = None
    draft_size: int | None = None
    tensor_decode: bool = False
    device_decode: bool = False

    def init_bad_images(
        self,
        on_bad_image: str = "skip",
        bad_image_log: BadImageLog | str | Path | None = None,
        min_size: int | None = None,
        draft_size: int | None = None,
        tensor_decode: bool = False,
        device_decode: bool = False,
    ) -> None:
        check_truncation_detected()
        if draft_size is not None and (tensor_decode or device_decode):
            raise InputError(
                "draft_size (decode=reduced) is a PIL decode option; it cannot go with tensor_decode "
                "(decode=torchvision) or device_decode (decode=gpu)"
            )
        self.on_bad_image = check_on_bad_image(on_bad_image)
        self.bad_image_log, self.min_size, self.draft_size = as_bad_image_log(bad_image_log), min_size, draft_size
        self.tensor_decode, self.device_decode = tensor_decode, device_decode

    def read_image(self, path: str | Path) -> EncodedJPEG | torch.Tensor | Image.Image | None:
        """RGB PIL image, a uint8 (3, H, W) tensor with `tensor_decode`, an `EncodedJPEG` to decode on the training
        device with `device_decode` (other files decoded as with `tensor_decode`); None for a skipped file."""
        if self.device_decode:
            return read_for_device(path, self.on_bad_image, self.bad_image_log, self.min_size)
        if self.tensor_decode:
            return load_rgb_tensor(path, self.on_bad_image, self.bad_image_log, self.min_size)
        return load_rgb(path, self.on_bad_image, self.bad_image_log, self.min_size, self.draft_size)

    def load_item(self, index: int) -> tuple[Any, Any] | None:
        raise NotImplementedError

    if TYPE_CHECKING:  # provided by the dataset class this is mixed into

        def __len__(self) -> int: ...

    def __getitem__(self, index: int):
        return first_readable(self.load_item, index, len(self), type(self).__name__)


class FolderSkipBadImages(SkipBadImages):
    """`SkipBadImages` for a torchvision `DatasetFolder` (`samples`, `transform`, `target_transform`)."""

    # set by DatasetFolder.__init__
    samples: list[tuple[str, int]]
    transform: Callable[[Any], Any] | None
    target_transform: Callable[[Any], Any] | None

    def load_item(self, index: int) -> tuple[Any, Any] | None:
        """(transformed image, target) of sample `index`, or None if its file was skipped."""
        path, target = self.samples[index]
        image = self.read_image(path)
        if image is None:
            return None
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target


class ReadableSubset(Subset):
    """A `Subset` of a `SkipBadImages` dataset whose substitutes come from the subset itself, so that a
    bad training image is never replaced by a test image."""

    def __getitem__(self, index: int):
        return first_readable(
            # a Subset of a SkipBadImages dataset
            lambda i: cast(SkipBadImages, self.dataset).load_item(self.indices[i]),
            index,
            len(self),
            type(self.dataset).__name__,
        )

    def __getitems__(self, indices: list[int]) -> list:
        # Subset.__getitems__ would go to the dataset directly, past the substitution above.
        return [self[i] for i in indices]

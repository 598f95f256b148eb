"""`data.decode=gpu`: JPEGs decoded, resized and cropped on the training device, a batch at a time.

A loader worker only reads the file's bytes, checks its header and draws the sample's crop and flip (under the
sample's seed, as the CPU pipeline does); `collate_for_device` keeps the variable-length bytes as a list; the
datamodule's `on_before_batch_transfer` hands the batch to `DeviceDecoder`, which decodes every JPEG of the
batch in one `torchvision.io.decode_jpeg(..., device=...)` call (nvJPEG on a GPU), resizes the short side to
`resize_size` where needed, and crops, flips and subtracts the mean image on the device.

The numbers are those of `data.decode=torchvision` (the same resize, crop, flip and mean subtraction from the
same random draws): bit-identical when decoding on a CPU, within the decoders' rounding on a GPU (nvJPEG's
IDCT and colour conversion are not libjpeg-turbo's). Only whole, 8-bit, 3-channel baseline JPEGs go to the
device; any other file (PNG, grayscale, CMYK, progressive, truncated, unreadable) is decoded in the worker
by `load_rgb_tensor` with its conversion and skipping rules, and sent as pixels already at `resize_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as F

from zf_lightning.data.image_files import BadImageLog, load_rgb_tensor
from zf_lightning.data.jpeg import EncodedJPEG
from zf_lightning.data.transforms import paper_base_uint8
from zf_lightning.utils.errors import InputError


class DeviceSample(NamedTuple):
    payload: torch.Tensor  # 1-D: a JPEG's bytes; 3-D: uint8 pixels already at resize_size x resize_size
    path: str | None
    crop: torch.Tensor  # (top, left, flip) of the training crop; zeros for val and test


class PrepareForDevice:
    """The worker's share of `decode=gpu`, in place of the dataset's transform: files the device cannot decode
    become pixels at `resize_size`, and a training sample draws its crop and flip here, under its own seed,
    exactly as `v2.RandomCrop` then `v2.RandomHorizontalFlip` draw them in the CPU pipeline."""

    def __init__(self, resize_size: int, crop_size: int, split: str) -> None:
        self.resize_size, self.crop_size, self.split = resize_size, crop_size, split
        self.base = paper_base_uint8(resize_size)

    def __call__(self, image: EncodedJPEG | torch.Tensor | Image.Image) -> DeviceSample:
        if isinstance(image, EncodedJPEG):
            payload, path = image
        else:
            payload, path = self.base(image).as_subclass(torch.Tensor), None
        crop = torch.zeros(3, dtype=torch.int64)
        if self.split == "train":
            room = self.resize_size - self.crop_size + 1
            if room > 1:  # v2.RandomCrop draws nothing when the crop is the whole image
                crop[0] = int(torch.randint(0, room, size=()))
                crop[1] = int(torch.randint(0, room, size=()))
            crop[2] = int(torch.rand(1) < 0.5)  # v2.RandomHorizontalFlip(p=0.5) flips when rand < p
        return DeviceSample(payload, path, crop)


@dataclass
class DeviceBatch:
    """A collated `decode=gpu` batch: payloads left as a list (JPEGs differ in length)."""

    split: str
    payloads: list[torch.Tensor]
    paths: list[str | None]
    crops: torch.Tensor  # (B, 3) int64
    labels: torch.Tensor

    def pin_memory(self) -> DeviceBatch:  # called by the DataLoader with pin_memory=True
        return DeviceBatch(
            self.split,
            [p.pin_memory() for p in self.payloads],
            self.paths,
            self.crops.pin_memory(),
            self.labels.pin_memory(),
        )

    def __len__(self) -> int:
        return len(self.payloads)


def collate_for_device(items: list[tuple[DeviceSample, int]], split: str) -> DeviceBatch:
    samples, labels = zip(*items)
    return DeviceBatch(
        split,
        [s.payload for s in samples],
        [s.path for s in samples],
        torch.stack([s.crop for s in samples]),
        torch.as_tensor(labels),
    )


class DeviceDecoder:
    """Decodes a `DeviceBatch` on `device` into the paper preset's inputs: (B, 3, crop, crop) for train and val,
    (B, 10, 3, crop, crop) for a 10-crop test. A JPEG the device cannot decode is read again on the CPU
    (`load_rgb_tensor`: recorded, and skipped or fatal by `on_bad_image`); a skipped one is replaced by the next
    image of the batch, so the batch keeps its size."""

    def __init__(
        self,
        resize_size: int,
        crop_size: int,
        mean_image: torch.Tensor,
        ten_crop_test: bool = True,
        on_bad_image: str = "skip",
        bad_image_log: BadImageLog | None = None,
    ) -> None:
        if tuple(mean_image.shape) != (3, resize_size, resize_size):
            raise InputError(f"the mean image is {tuple(mean_image.shape)}; expected (3, {resize_size}, {resize_size})")
        self.resize_size, self.crop_size, self.ten_crop_test = resize_size, crop_size, ten_crop_test
        self.mean_image = mean_image.float()
        self.on_bad_image, self.bad_image_log = on_bad_image, bad_image_log or BadImageLog(None)
        self._device_means: dict[torch.device, torch.Tensor] = {}

    def __call__(self, batch: DeviceBatch, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        images = self.decode(batch, device)
        mean = self._device_means.get(device)
        if mean is None:
            mean = self._device_means[device] = self.mean_image.to(device)
        return self.crop(batch.split, images, mean, batch.crops.to(device, non_blocking=True)), batch.labels

    def decode(self, batch: DeviceBatch, device: torch.device) -> torch.Tensor:
        """The batch as (B, 3, resize, resize) uint8 on `device`: short side resized, centre square crop."""
        images: list[torch.Tensor | None] = [
            None if p.ndim == 1 else p.to(device, non_blocking=True) for p in batch.payloads
        ]
        encoded = [i for i, p in enumerate(batch.payloads) if p.ndim == 1]
        if encoded:
            for i, image in zip(encoded, self._decode_jpegs(batch, encoded, device)):
                images[i] = None if image is None else self._square(image)
        readable = [i for i, image in enumerate(images) if image is not None]
        if not readable:
            raise RuntimeError(
                f"no image of a batch of {len(images)} could be decoded: {[p for p in batch.paths if p]}"
            )
        for i in range(len(images)):  # a skipped file: the next readable image of the batch, as the datasets do
            if images[i] is None:
                images[i] = images[next((j for j in readable if j > i), readable[0])]
        return torch.stack(cast(list[torch.Tensor], images))  # every None was replaced above

    def _decode_jpegs(self, batch: DeviceBatch, indices: list[int], device: torch.device) -> list[torch.Tensor | None]:
        data = [batch.payloads[i] for i in indices]
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass  # one bad file fails the whole batched call: find it
        decoded = []
        for i, payload in zip(indices, data):
            try:
                decoded.append(decode_jpeg(payload, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                path = batch.paths[i]
                assert path is not None  # a JPEG payload always comes with its file's path
                image = load_rgb_tensor(path, self.on_bad_image, self.bad_image_log)  # records, skips or raises
                if image is not None and not isinstance(image, torch.Tensor):
                    image = F.pil_to_tensor(image)  # a converted (non-RGB) image comes back from PIL
                decoded.append(None if image is None else image.to(device))
        return decoded

    def _square(self, image: torch.Tensor) -> torch.Tensor:
        # v2.Resize(resize) then v2.CenterCrop(resize), as `paper_base_uint8`; a no-op on a zf-prepare copy
        if min(image.shape[-2:]) != self.resize_size:
            image = F.resize(image, [self.resize_size], antialias=True)
        return F.center_crop(image, [self.resize_size, self.resize_size])

    def crop(self, split: str, images: torch.Tensor, mean: torch.Tensor, crops: torch.Tensor) -> torch.Tensor:
        size = self.crop_size
        if split == "train":
            # One gather for every image's crop and flip; the mean image is cropped with the same indices and
            # subtracted after: the same numbers as `RandomCropFlipSubtractMean`.
            offsets = torch.arange(size, device=images.device)
            rows = (crops[:, 0:1] + offsets)[:, None, :, None]
            columns = (crops[:, 1:2] + torch.where(crops[:, 2:3].bool(), size - 1 - offsets, offsets))[:, None, None, :]
            channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
            batch = torch.arange(len(images), device=images.device)[:, None, None, None]
            return images[batch, channels, rows, columns].float() - mean[channels, rows, columns]
        if split == "test" and self.ten_crop_test:
            return torch.stack(F.ten_crop(images.float() - mean, [size, size]), dim=1)
        return F.center_crop(images, [size, size]).float() - F.center_crop(mean, [size, size])

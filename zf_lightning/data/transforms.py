"""Input presets: the paper's (0-255 scale, mean image subtracted) and torchvision's (mean/std normalised)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from zf_lightning.utils.errors import InputError

PRESETS = ("paper", "torchvision")
# The paper preset's training crops: "random" (any crop_size window, flipped or not) or "ten" (one of the 4 corner
# and centre crops, flipped or not: the 10 crops of `v2.TenCrop`, which the test uses).
TRAIN_CROPS = ("random", "ten")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SubtractMeanImage(nn.Module):
    """Subtract a per-pixel mean image (C, H, W): the paper's normalisation, which torchvision lacks."""

    def __init__(self, mean_image: torch.Tensor) -> None:
        super().__init__()
        self.mean_image = mean_image.float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape != self.mean_image.shape:
            raise InputError(
                f"image of shape {tuple(image.shape)} does not match the mean image {tuple(self.mean_image.shape)}"
            )
        return image - self.mean_image


class RandomCropFlipSubtractMean(nn.Module):
    """`v2.RandomCrop(crop_size)` and `v2.RandomHorizontalFlip()` applied to a uint8 image and the mean image
    alike, then the crop made float and the mean's crop subtracted.

    The same numbers, from the same random draws, as subtracting the mean image from the float image first
    and cropping after (cropping and flipping only move pixels), with the float work on the crop's pixels
    instead of the whole image's: the paper preset's training transform, about 1 ms faster per image.
    """

    def __init__(self, crop_size: int, mean_image: torch.Tensor) -> None:
        super().__init__()
        self.mean_image = tv_tensors.Image(mean_image.float())
        self.crop_flip = v2.Compose([v2.RandomCrop(crop_size), v2.RandomHorizontalFlip()])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape != self.mean_image.shape:
            raise InputError(
                f"image of shape {tuple(image.shape)} does not match the mean image {tuple(self.mean_image.shape)}"
            )
        crop, mean = self.crop_flip(tv_tensors.Image(image), self.mean_image)  # one draw of the crop and flip for both
        return crop.as_subclass(torch.Tensor).float() - mean.as_subclass(torch.Tensor)


def ten_crop_boxes(height: int, width: int, crop_size: int) -> list[tuple[int, int, bool]]:
    """The 10 crops of `v2.TenCrop(crop_size)` of a `height` x `width` image, in its order, as (top, left, flip):
    the window at (top, left), then mirrored if `flip`. TenCrop's last 5 are the corners and centre of the mirrored
    image, that is the mirrored windows at the mirrored lefts."""
    bottom, right = height - crop_size, width - crop_size
    centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))  # as `v2.CenterCrop` places it
    corners_and_centre = [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]
    return [(top, left, False) for top, left in corners_and_centre] + [
        (top, right - left, True) for top, left in corners_and_centre
    ]


class TenCropChoiceSubtractMean(nn.Module):
    """One of the 10 crops (`ten_crop_boxes`) of a uint8 image, drawn uniformly from the default generator (under
    the sample's seed in a training loader, as the random crops are), made float, minus the mean image's same crop."""

    def __init__(self, crop_size: int, mean_image: torch.Tensor) -> None:
        super().__init__()
        self.crop_size, self.mean_image = crop_size, mean_image.float()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape != self.mean_image.shape:
            raise InputError(
                f"image of shape {tuple(image.shape)} does not match the mean image {tuple(self.mean_image.shape)}"
            )
        boxes = ten_crop_boxes(image.shape[-2], image.shape[-1], self.crop_size)
        top, left, flip = boxes[int(torch.randint(len(boxes), size=()))]
        rows, columns = slice(top, top + self.crop_size), slice(left, left + self.crop_size)
        crop = image.as_subclass(torch.Tensor)[:, rows, columns].float() - self.mean_image[:, rows, columns]
        return crop.flip(-1) if flip else crop


class StackCrops(nn.Module):
    """Tuple of crops from `v2.TenCrop` -> one (crops, C, H, W) tensor."""

    def forward(self, crops: Iterable[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(crops))


def paper_base(resize_size: int) -> v2.Compose:
    """Short side to `resize_size`, centre `resize_size` square crop, float on the 0-255 scale."""
    return v2.Compose(
        [v2.ToImage(), v2.Resize(resize_size), v2.CenterCrop(resize_size), v2.ToDtype(torch.float32, scale=False)]
    )


def paper_base_uint8(resize_size: int) -> v2.Compose:
    """`paper_base` before the conversion to float: short side to `resize_size`, centre square crop, uint8."""
    return v2.Compose([v2.ToImage(), v2.Resize(resize_size), v2.CenterCrop(resize_size)])


def paper_transforms(
    resize_size: int,
    crop_size: int,
    mean_image: torch.Tensor,
    ten_crop_test: bool = True,
    train_crops: str = "random",
) -> dict[str, v2.Compose]:
    """Section 3: random `crop_size` crops and flips (`train_crops="random"`) or one of the 10 crops (`"ten"`) to
    train, the centre crop to validate, 10 crops to test."""
    if train_crops not in TRAIN_CROPS:
        raise InputError(f"data.train_crops must be one of {list(TRAIN_CROPS)}, got {train_crops!r}")
    base = [paper_base(resize_size), SubtractMeanImage(mean_image)]
    test = [v2.TenCrop(crop_size), StackCrops()] if ten_crop_test else [v2.CenterCrop(crop_size)]
    # "random" = Compose([*base, RandomCrop(crop_size), RandomHorizontalFlip()]), with the float work on the crop only
    crop: nn.Module = (
        RandomCropFlipSubtractMean(crop_size, mean_image)
        if train_crops == "random"
        else TenCropChoiceSubtractMean(crop_size, mean_image)
    )
    return {
        "train": v2.Compose([paper_base_uint8(resize_size), crop]),
        "val": v2.Compose([*base, v2.CenterCrop(crop_size)]),
        "test": v2.Compose([*base, *test]),
    }


def torchvision_transforms(resize_size: int, crop_size: int, ten_crop_test: bool = True) -> dict[str, v2.Compose]:
    """The modern recipe: random resized crops, 0-1 scale, ImageNet mean/std normalisation."""
    to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    resized = [v2.ToImage(), v2.Resize(resize_size)]
    test = [v2.TenCrop(crop_size), StackCrops()] if ten_crop_test else [v2.CenterCrop(crop_size)]
    return {
        "train": v2.Compose([v2.ToImage(), v2.RandomResizedCrop(crop_size), v2.RandomHorizontalFlip(), *to_float]),
        "val": v2.Compose([*resized, v2.CenterCrop(crop_size), *to_float]),
        "test": v2.Compose([*resized, *to_float, *test]),
    }

"""A folder of the user's images: listing, decoding, labels, and where a box on the original lands in the crop."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from zf_lightning.data.transforms import paper_base, torchvision_transforms
from zf_lightning.data.user_images import UserImages, box_in_input, list_images, resolve_labels


def painted(height: int, width: int, box) -> Image.Image:
    """A black image with the box [left, top, right, bottom) white."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    left, top, right, bottom = box
    image[:, top:bottom, left:right] = 255
    return v2.functional.to_pil_image(image)


def bright_region(crop: torch.Tensor) -> tuple[int, int, int, int]:
    ys, xs = torch.nonzero(crop.float().mean(dim=0) > 20, as_tuple=True)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@pytest.mark.parametrize(
    "size, box, resize, crop",
    [
        ((375, 500), (200, 100, 260, 150), 256, 224),  # landscape, ImageNet-like
        ((500, 333), (100, 300, 180, 340), 256, 224),  # portrait, odd width
        ((72, 72), (10, 20, 30, 41), 72, 64),  # the built-in data's sizes
        ((300, 301), (0, 0, 40, 40), 256, 224),  # a corner box, cut by the crop
    ],
)
def test_box_lands_where_the_paper_transform_puts_its_pixels(size, box, resize, crop):
    image = painted(*size, box)
    transformed = v2.Compose([paper_base(resize), v2.CenterCrop(crop)])(image)
    expected = bright_region(transformed)
    mapped = box_in_input(box, size, resize, crop)
    # The mapping rounds outwards; resampling blurs the edges by at most a pixel.
    assert all(abs(a - b) <= 1 for a, b in zip(mapped, expected)), (mapped, expected)
    assert mapped[0] <= expected[0] + 1 and mapped[2] >= expected[2] - 1


def test_box_with_the_torchvision_preset():
    size, box = (375, 500), (300, 60, 380, 120)
    transformed = torchvision_transforms(256, 224, ten_crop_test=False)["val"].transforms[:3]
    crop = v2.Compose(transformed)(painted(*size, box))
    expected = bright_region(crop)
    mapped = box_in_input(box, size, 256, 224, preset="torchvision")
    assert all(abs(a - b) <= 1 for a, b in zip(mapped, expected)), (mapped, expected)


def test_boxes_outside_the_image_or_the_crop_are_refused():
    with pytest.raises(ValueError, match=r"lies outside the 500x375 image"):
        box_in_input((450, 10, 510, 50), (375, 500), 256, 224)
    with pytest.raises(ValueError, match=r"falls outside the centre 224x224 crop"):
        box_in_input((0, 0, 30, 30), (375, 500), 256, 224)  # in the left margin the crop drops


def test_folder_listing_decoding_and_labels(tmp_path):
    Image.new("RGB", (40, 30), "red").save(tmp_path / "b.png")
    Image.new("L", (20, 50), 128).save(tmp_path / "a.jpg")  # grayscale: comes out RGB
    (tmp_path / "readme.md").write_text("ignored")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png"]
    images = UserImages(tmp_path, {"a.jpg": "dog", "b.png": 0}, class_names=["cat", "dog"], num_classes=2)
    assert images.targets == [1, 0] and images.sizes == [(50, 20), (30, 40)]
    assert images[0][0].mode == "RGB" and images[0][0].size == (20, 50)
    assert UserImages(tmp_path).targets == [-1, -1]


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_images(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        list_images(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"1 unreadable image\(s\): empty.jpg"):
        UserImages(tmp_path)
    with pytest.raises(ValueError, match=r"unknown classes.*a.png: 'bird'"):
        resolve_labels({"a.png": "bird"}, ["a.png"], ["cat", "dog"], 2)
    with pytest.raises(FileNotFoundError, match="labels=.*no such file"):
        resolve_labels(tmp_path / "labels.yaml", ["a.png"], None, 2)

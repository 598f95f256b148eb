"""The paper's preset: 0-255 scale, mean image subtracted, crops in the right places."""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from zf_lightning.data.mean_image import compute_mean_image, load_or_compute_mean_image
from zf_lightning.data.transforms import paper_base, paper_transforms


def test_ten_crop_gives_the_four_corners_the_centre_and_their_mirror_images():
    image = torch.arange(3 * 9 * 9, dtype=torch.uint8).reshape(3, 9, 9)
    crops = paper_transforms(9, 5, torch.zeros(3, 9, 9))["test"](image)
    assert crops.shape == (10, 3, 5, 5)
    x = image.float()
    corners_and_centre = [x[:, :5, :5], x[:, :5, 4:], x[:, 4:, :5], x[:, 4:, 4:], x[:, 2:7, 2:7]]
    for i, expected in enumerate(corners_and_centre):
        torch.testing.assert_close(crops[i], expected)
    flipped = x.flip(-1)  # the mirrored image's corners and centre, as torchvision's ten_crop orders them
    for i, expected in enumerate(
        [flipped[:, :5, :5], flipped[:, :5, 4:], flipped[:, 4:, :5], flipped[:, 4:, 4:], flipped[:, 2:7, 2:7]]
    ):
        torch.testing.assert_close(crops[5 + i], expected)


def test_paper_preset_subtracts_the_mean_image_on_the_0_255_scale():
    image = torch.full((3, 12, 16), 200, dtype=torch.uint8)  # short side 12 -> resized to 8x10, centre 8x8
    mean = torch.full((3, 8, 8), 50.0)
    out = paper_transforms(8, 6, mean)["val"](image)
    assert out.shape == (3, 6, 6)
    torch.testing.assert_close(out, torch.full((3, 6, 6), 150.0))


def test_train_crops_are_random_windows_of_the_mean_subtracted_image():
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    mean = torch.rand(3, 8, 8) * 255
    centred = image.float() - mean
    windows = [centred[:, i : i + 6, j : j + 6] for i in range(3) for j in range(3)]
    windows += [F.horizontal_flip(w) for w in windows]
    train = paper_transforms(8, 6, mean)["train"]
    torch.manual_seed(0)
    for _ in range(20):
        crop = train(image)
        assert any(torch.allclose(crop, w) for w in windows)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return paper_base(8)(self.images[i]), 0


def test_mean_image_is_the_pixelwise_average_and_is_cached(tmp_path, monkeypatch):
    images = [torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8) for _ in range(7)]
    expected = torch.stack(images).double().mean(0).float()
    torch.testing.assert_close(compute_mean_image(ListDataset(images), batch_size=3), expected)
    first = load_or_compute_mean_image("key", ListDataset(images), tmp_path)
    monkeypatch.setattr("zf_lightning.data.mean_image.compute_mean_image", lambda *a, **k: 1 / 0)
    torch.testing.assert_close(load_or_compute_mean_image("key", ListDataset(images), tmp_path), first)
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.iterdir()).name]  # one file, no temp leftovers


def test_train_transform_equals_subtracting_the_mean_before_cropping():
    # The paper preset crops and flips the uint8 image and the mean image together, then subtracts: it must
    # give exactly what subtracting first and cropping after gives, with the same random draws.
    from torchvision.transforms import v2

    from zf_lightning.data.transforms import SubtractMeanImage

    mean = torch.rand(3, 16, 16) * 255
    reference = v2.Compose([paper_base(16), SubtractMeanImage(mean), v2.RandomCrop(12), v2.RandomHorizontalFlip()])
    train = paper_transforms(16, 12, mean)["train"]
    for seed in range(30):
        image = torch.randint(0, 256, (3, 20, 23 + seed % 5), dtype=torch.uint8)
        torch.manual_seed(seed)
        expected, next_draw = reference(image), torch.rand(1)
        torch.manual_seed(seed)
        out = train(image)
        assert type(out) is torch.Tensor and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert torch.equal(torch.rand(1), next_draw)  # the same random draws consumed

"""`data.train_crops=ten`: every training sample is one of the 10 crops of its image (the test's 10 crops), drawn
per sample and epoch under the sample's own seed; `random` stays the default."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from tests.helpers.configs import TINY, compose_config
from zf_lightning.cli.train import train
from zf_lightning.data import ImageNetDataModule, SyntheticDataModule
from zf_lightning.data.sampling import SeededSamples
from zf_lightning.data.transforms import paper_transforms


def ten_crops(image: torch.Tensor, mean: torch.Tensor, resize_size: int, crop_size: int) -> list[torch.Tensor]:
    """The 4 corner and centre crops of the resized, centre-squared, mean-subtracted image and of its mirror image."""
    square = F.center_crop(F.resize(image, [resize_size]), [resize_size, resize_size]).float() - mean
    far = resize_size - crop_size
    crops = []
    for picture in (square, F.horizontal_flip(square)):
        crops += [F.crop(picture, top, left, crop_size, crop_size) for top, left in [(0, 0), (0, far), (far, 0)]]
        crops += [F.crop(picture, far, far, crop_size, crop_size), F.center_crop(picture, [crop_size, crop_size])]
    return crops


def which_crop(sample: torch.Tensor, crops: list[torch.Tensor]) -> int:
    matches = [k for k, crop in enumerate(crops) if torch.equal(sample, crop)]
    assert len(matches) == 1, f"the sample is none (or several) of the 10 crops: {matches}"
    return matches[0]


@pytest.mark.parametrize(("height", "width", "resize", "crop"), [(30, 41, 24, 17), (20, 20, 20, 16), (13, 9, 9, 5)])
def test_each_training_crop_is_one_of_the_ten_test_crops_and_all_ten_occur(height, width, resize, crop):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    mean = torch.rand(3, resize, resize) * 255
    transforms = paper_transforms(resize, crop, mean, train_crops="ten")
    expected = ten_crops(image, mean, resize, crop)
    # the same 10 crops as the test's (odd room around the crop included, where TenCrop's mirrored centre shifts)
    torch.testing.assert_close(transforms["test"](image), torch.stack(expected), rtol=0, atol=0)
    drawn = Counter(which_crop(transforms["train"](image), expected) for _ in range(300))
    assert sorted(drawn) == list(range(10))
    assert min(drawn.values()) > 10  # uniform: 30 expected each


def synthetic(tmp_path, **options) -> SyntheticDataModule:
    datamodule = SyntheticDataModule(
        train_per_class=4, val_per_class=1, test_per_class=1, num_workers=0, cache_dir=tmp_path, **options
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_the_datamodule_draws_one_of_the_ten_crops_per_sample_and_epoch_from_the_samples_seed(tmp_path):
    datamodule = synthetic(tmp_path, train_crops="ten")
    samples = SeededSamples(datamodule.datasets["train"])
    images = datamodule.make_dataset("train", None)  # the raw generated images
    mean = datamodule.load_mean_image()
    seed, drawn = 7, {}
    for index in range(len(samples)):
        crops = ten_crops(images[index][0], mean, datamodule.resize_size, datamodule.crop_size)
        for epoch in range(3):
            torch.manual_seed(100 * index + epoch)  # the process's generator plays no part
            sample, label = samples[(index, seed, epoch)]
            assert label == images[index][1] and sample.shape == (3, 64, 64)
            drawn[index, epoch] = which_crop(sample, crops)
    assert set(drawn.values()) == set(range(10))
    assert any(len({drawn[index, epoch] for epoch in range(3)}) > 1 for index in range(len(samples)))  # per epoch
    for index, epoch in [(0, 0), (5, 2), (39, 1)]:  # the same (seed, epoch, index): the same crop, in any order
        torch.manual_seed(index)
        crops = ten_crops(images[index][0], mean, datamodule.resize_size, datamodule.crop_size)
        assert which_crop(samples[(index, seed, epoch)][0], crops) == drawn[index, epoch]
    # another seed draws other crops
    sizes = datamodule.resize_size, datamodule.crop_size
    other_seed = [which_crop(samples[(i, seed + 1, 0)][0], ten_crops(images[i][0], mean, *sizes)) for i in range(40)]
    assert other_seed != [drawn[i, 0] for i in range(40)]


def test_random_crops_stay_the_default_and_reach_beyond_the_ten(tmp_path):
    assert synthetic(tmp_path).train_crops == "random"
    image, mean = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8), torch.rand(3, 16, 16) * 255
    default, random = (
        paper_transforms(16, 12, mean)["train"],
        paper_transforms(16, 12, mean, train_crops="random")["train"],
    )
    samples = []
    for seed in range(20):
        torch.manual_seed(seed)
        samples.append(default(image))
        torch.manual_seed(seed)
        assert torch.equal(random(image), samples[-1])
    crops = ten_crops(image, mean, 16, 12)
    assert any(not any(torch.equal(sample, crop) for crop in crops) for sample in samples)


def test_bad_train_crops_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data.train_crops must be one of \['random', 'ten'\], got 'five'"):
        SyntheticDataModule(cache_dir=tmp_path, train_crops="five")
    with pytest.raises(ValueError, match="data.train_crops=ten is the paper preset's"):
        SyntheticDataModule(cache_dir=tmp_path, preset="torchvision", train_crops="ten")
    with pytest.raises(ValueError, match="data.decode=gpu draws random training crops"):
        ImageNetDataModule(root=tmp_path / "missing", decode="gpu", train_crops="ten")


def test_a_tiny_training_run_with_the_ten_crops(tmp_path):
    overrides = [*TINY, "data.train_crops=ten", "trainer.max_epochs=1", "logger=csv", "test=false"]
    summary = train(compose_config("train", tmp_path / "run", overrides))
    assert summary["status"] == "completed" and summary["config"]["data"]["train_crops"] == "ten"

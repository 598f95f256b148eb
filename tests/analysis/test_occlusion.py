"""Occlusion sensitivity (Fig. 7) against a plain loop of single forward passes with the square pasted."""

from __future__ import annotations

import pytest
import torch

from zf_lightning.analysis.occlusion import OcclusionSensitivity, occluder_positions
from zf_lightning.deconv.engine import Deconvnet
from zf_lightning.testing.tiny_models import lively_tiny_zfnet

SIZE = 64
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def model():
    return lively_tiny_zfnet(NUM_CLASSES, SIZE)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, SIZE, SIZE, generator=generator)


TARGETS = torch.tensor([3, 7])


def reference(model, images, targets, window, stride, value=0.0, partial=True):
    """One forward pass per (image, position): probabilities, top class and layer-5 map sums, independently."""
    deconvnet = Deconvnet(model)
    end = SIZE - window + (stride if partial else 1)
    starts = list(range(0, end, stride))
    prob = torch.zeros(len(images), len(starts), len(starts))
    top = torch.zeros(len(images), len(starts), len(starts), dtype=torch.long)
    top_prob = torch.zeros(len(images), len(starts), len(starts))
    act = torch.zeros(len(images), len(starts), len(starts))
    chosen = []
    with torch.no_grad():
        for b, image in enumerate(images):
            clean = deconvnet.feature_maps(image[None], [5])[5][0]  # (maps, h, w)
            per_map_max = torch.stack([clean[m].max() for m in range(clean.shape[0])])
            best = max(range(len(per_map_max)), key=lambda m: (per_map_max[m].item(), -m))
            chosen.append(best)
            for i, y in enumerate(starts):
                for j, x in enumerate(starts):
                    occluded = image.clone()
                    occluded[:, y : y + window, x : x + window] = value
                    probs = torch.softmax(model(occluded[None])[0], dim=0)
                    prob[b, i, j] = probs[targets[b]]
                    top[b, i, j] = probs.argmax()
                    top_prob[b, i, j] = probs.max()
                    act[b, i, j] = deconvnet.feature_maps(occluded[None], [5])[5][0, best].sum()
    return starts, prob, top, top_prob, act, torch.tensor(chosen)


@pytest.mark.parametrize("window,stride", [(16, 8), (12, 10), (20, 7)])
def test_matches_single_forward_passes(model, images, window, stride):
    result = OcclusionSensitivity(model, window=window, stride=stride, batch_size=16)(images, TARGETS)
    starts, prob, top, top_prob, act, chosen = reference(model, images, TARGETS, window, stride)
    assert result.rows.tolist() == starts and result.cols.tolist() == starts
    assert torch.equal(result.chosen_map, chosen)
    torch.testing.assert_close(result.true_class_prob, prob, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.top_class_prob, top_prob, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.layer_activation, act, rtol=1e-4, atol=1e-5)
    assert torch.equal(result.top_class, top)
    assert result.true_class_prob.shape == (2, len(starts), len(starts))
    # Not trivial: occlusion changes the outputs somewhere.
    assert (result.true_class_prob - result.probabilities[[0, 1], TARGETS][:, None, None]).abs().max() > 0.01


def test_full_windows_only(model, images):
    result = OcclusionSensitivity(model, window=12, stride=10, include_partial=False)(images, TARGETS)
    starts, prob, *_ = reference(model, images, TARGETS, 12, 10, partial=False)
    assert result.rows.tolist() == starts == [0, 10, 20, 30, 40, 50]
    torch.testing.assert_close(result.true_class_prob, prob, rtol=1e-4, atol=1e-5)


def test_positions_follow_captum_count():
    assert occluder_positions(224, 32, 8).tolist() == list(range(0, 193, 8))
    assert len(occluder_positions(64, 12, 10)) == 7  # ceil(52 / 10) + 1, the last square cut by the border
    assert len(occluder_positions(64, 12, 10, include_partial=False)) == 6
    assert occluder_positions(64, 64, 5).tolist() == [0]


def test_other_occluder_value(model, images):
    result = OcclusionSensitivity(model, window=16, stride=16, occluder_value=1.5)(images, TARGETS)
    _, prob, *_ = reference(model, images, TARGETS, 16, 16, value=1.5)
    torch.testing.assert_close(result.true_class_prob, prob, rtol=1e-4, atol=1e-5)


def test_chosen_map_and_projection(model, images):
    result = OcclusionSensitivity(model, window=32, stride=32)(images, TARGETS)
    maps = Deconvnet(model).feature_maps(images, [5])[5]
    expected = maps.flatten(2).max(dim=2).values.argmax(dim=1)
    assert torch.equal(result.chosen_map, expected)
    torch.testing.assert_close(result.map_max, maps.flatten(2).max(dim=2).values)
    torch.testing.assert_close(result.unoccluded_activation, maps[[0, 1], expected].sum(dim=(1, 2)))
    for b in range(2):
        projection = Deconvnet(model).project(images[b][None], 5, [int(expected[b])], mode="max")[0, 0]
        torch.testing.assert_close(result.projection[b], projection)
    assert result.projection.shape == images.shape and result.projection.abs().sum() > 0
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    torch.testing.assert_close(result.probabilities, probs)


def test_occluding_zeros_with_grey_changes_nothing(model, images):
    zero = torch.zeros(1, 3, SIZE, SIZE)
    result = OcclusionSensitivity(model, window=16, stride=12)(zero, [4])
    expected = result.probabilities[0, 4].expand_as(result.true_class_prob[0])
    torch.testing.assert_close(result.true_class_prob[0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        result.layer_activation[0], result.unoccluded_activation[0].expand(result.layer_activation.shape[1:])
    )

    partly = images[:1].clone()
    partly[:, :, :32, :32] = 0
    result = OcclusionSensitivity(model, window=16, stride=8)(partly, [4])
    inside = result.true_class_prob[0, :3, :3]  # squares at 0, 8, 16: within the zero corner
    torch.testing.assert_close(inside, result.probabilities[0, 4].expand_as(inside), rtol=1e-4, atol=1e-5)


def test_batch_size_does_not_change_results(model, images):
    results = [OcclusionSensitivity(model, window=12, stride=10, batch_size=n)(images, TARGETS) for n in (1, 7, 4096)]
    for other in results[1:]:
        for name in ("true_class_prob", "top_class_prob", "layer_activation"):
            torch.testing.assert_close(getattr(other, name), getattr(results[0], name), rtol=1e-4, atol=1e-5)
        assert torch.equal(other.top_class, results[0].top_class)
        assert torch.equal(other.chosen_map, results[0].chosen_map)


def test_channels_last_same_results(model, images):
    plain = OcclusionSensitivity(model, window=16, stride=8)(images, TARGETS)
    fast = OcclusionSensitivity(model, window=16, stride=8, channels_last=True)(images, TARGETS)
    torch.testing.assert_close(fast.true_class_prob, plain.true_class_prob, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.layer_activation, plain.layer_activation, rtol=1e-4, atol=1e-5)


def test_model_mode_restored_and_no_grads(model, images):
    model.train()
    model.classifier[2].eval()  # a mixed state must come back as it was
    before = {name: module.training for name, module in model.named_modules()}
    weights = [p.detach().clone() for p in model.parameters()]
    inputs = images.clone().requires_grad_(True)
    try:
        result = OcclusionSensitivity(model, window=32, stride=16)(inputs, TARGETS)
        assert {name: module.training for name, module in model.named_modules()} == before
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert torch.equal(inputs.detach(), images)
    for value in vars(result).values():
        if isinstance(value, torch.Tensor):
            assert not value.requires_grad
    # Dropout was off: the same call twice gives the same maps.
    again = OcclusionSensitivity(model, window=32, stride=16)(images, TARGETS)
    torch.testing.assert_close(again.true_class_prob, result.true_class_prob)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"window": 65}, "window 65x65 is larger than the 64x64"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"window": 0}, "window must be >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"layer": 6}, "layer must be an int in 1..5"),
        ({"window": (8, 8, 8)}, "window must be an int or a pair"),
    ],
)
def test_option_errors(model, images, options, match):
    with pytest.raises(ValueError, match=match):
        OcclusionSensitivity(model, **options)(images, TARGETS)


@pytest.mark.parametrize(
    "targets,match",
    [
        ([1, 2, 3], "got 3 targets for 2 images"),
        ([1], "got 1 targets for 2 images"),
        ([1, 10], r"target class\(es\) \[10\] out of range; expected classes in 0..9"),
        ([-1, 2], r"\[-1\] out of range"),
        ([0.5, 1.0], "class indices"),
    ],
)
def test_target_errors(model, images, targets, match):
    with pytest.raises(ValueError, match=match):
        OcclusionSensitivity(model, window=16, stride=8)(images, targets)


def test_images_must_be_4d(model, images):
    with pytest.raises(ValueError, match="4-D"):
        OcclusionSensitivity(model)(images[0], TARGETS[:1])


@pytest.mark.parametrize("window,stride", [(16, 8), (12, 10)])
def test_captum_attribution_is_mean_probability_drop(model, images, window, stride):
    """Captum's Occlusion attribution at a pixel = mean, over the squares covering it, of p(clean) - p(occluded)."""
    captum_attr = pytest.importorskip("captum.attr")
    result = OcclusionSensitivity(model, window=window, stride=stride)(images, TARGETS)
    attribution = captum_attr.Occlusion(lambda x: torch.softmax(model(x), dim=1)).attribute(
        images,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0,
        target=TARGETS,
    )
    drop = result.probabilities[[0, 1], TARGETS][:, None, None] - result.true_class_prob  # (B, nH, nW)
    ys = torch.arange(SIZE)
    cover_rows = ((ys >= result.rows[:, None]) & (ys < result.rows[:, None] + window)).float()  # (nH, H)
    cover_cols = ((ys >= result.cols[:, None]) & (ys < result.cols[:, None] + window)).float()  # (nW, W)
    total = torch.einsum("bij,iy,jx->byx", drop, cover_rows, cover_cols)
    count = torch.einsum("iy,jx->yx", cover_rows, cover_cols)
    assert (count > 0).all()
    expected = (total / count)[:, None].expand_as(attribution)
    torch.testing.assert_close(attribution.float(), expected, rtol=1e-4, atol=1e-6)

"""Invariance analysis (Fig. 5) against a plain loop: independent transforms, one forward pass per copy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from zf_lightning.analysis.invariance import TRANSFORMATIONS, Invariance, default_amounts, transform_images
from zf_lightning.testing.tiny_models import lively_tiny_zfnet
from zf_lightning.visualize.invariance_figure import build_invariance_figure, invariance_figure
from zf_lightning.visualize.style import styled, texts_outside_canvas

SIZE = 64
NUM_CLASSES = 10
TARGETS = torch.tensor([3, 7])
ALL_LAYERS = (1, 2, 3, 4, 5, 6, 7)
# Integer shifts, quarter turns and zooms >= 1: transforms with an independent exact formulation below.
AMOUNTS = {"translation": [-9, -3, 0, 4, 12], "scale": [1.0, 1.25, 2.0], "rotation": [0, 90, 180, 270, 360]}
# Distances: a copy batched differently (other GEMM blocking) moves float32 features by ~1e-6 of their norm.
DISTANCE_TOL = {"rtol": 1e-5, "atol": 1e-5}
PROB_TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def model():
    return lively_tiny_zfnet(NUM_CLASSES, SIZE)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ reference
def shifted_down(image: torch.Tensor, pixels: int) -> torch.Tensor:
    out = torch.zeros_like(image)
    if pixels > 0:
        out[..., pixels:, :] = image[..., :-pixels, :]
    elif pixels < 0:
        out[..., :pixels, :] = image[..., -pixels:, :]
    else:
        out[:] = image
    return out


def reference_transform(image: torch.Tensor, kind: str, amount: float) -> torch.Tensor:
    if kind == "translation":
        assert amount == int(amount)
        return shifted_down(image, int(amount))
    if kind == "rotation":
        assert amount % 90 == 0
        return torch.rot90(image, k=-int(amount) // 90, dims=(-2, -1))  # positive angle = clockwise on screen
    assert amount >= 1  # zoom in: every output pixel samples inside the image, no fill involved
    theta = torch.tensor([[1 / amount, 0.0, 0.0], [0.0, 1 / amount, 0.0]])[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", align_corners=False)[0]


def relu_outputs(model: nn.Module, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Paper layer -> flattened ReLU output (conv ReLUs are 1..5, classifier ReLUs 6, 7), and logits."""
    relus = [m for m in model.features if isinstance(m, nn.ReLU)] + [
        m for m in model.classifier if isinstance(m, nn.ReLU)
    ]
    captured = {}
    hooks = [
        relu.register_forward_hook(lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out.flatten(1).clone()))
        for layer, relu in enumerate(relus, start=1)
    ]
    try:
        with torch.no_grad():
            logits = model.classifier(model.features(x).flatten(1))
    finally:
        for hook in hooks:
            hook.remove()
    return captured, logits


def plain_loop(model, images, targets, amounts, layers, relative=False):
    """{kind: (distances {layer: (B, T)}, true prob, top class, top prob)} from one pass per (image, amount)."""
    out = {}
    for kind, values in amounts.items():
        dist = {layer: torch.zeros(len(images), len(values), dtype=torch.float64) for layer in layers}
        prob, top_prob = torch.zeros(len(images), len(values)), torch.zeros(len(images), len(values))
        top = torch.zeros(len(images), len(values), dtype=torch.long)
        for b, image in enumerate(images):
            clean, _ = relu_outputs(model, image[None])
            for t, amount in enumerate(values):
                features, logits = relu_outputs(model, reference_transform(image, kind, amount)[None])
                probs = torch.softmax(logits[0], dim=0)
                prob[b, t], top[b, t], top_prob[b, t] = probs[targets[b]], probs.argmax(), probs.max()
                for layer in layers:
                    f, f0 = features[layer][0].double(), clean[layer][0].double()
                    dist[layer][b, t] = ((f - f0) ** 2).sum().sqrt()  # Euclidean, the paper's Fig. 5
                    if relative:
                        dist[layer][b, t] /= (f0**2).sum().sqrt()
        out[kind] = (dist, prob, top, top_prob)
    return out


# ---------------------------------------------------------------- the engine
@pytest.mark.parametrize("relative", [False, True], ids=["euclidean (the paper's)", "relative"])
def test_matches_plain_loop(model, images, relative):
    results = Invariance(model, layers=ALL_LAYERS, batch_size=7, relative=relative)(images, TARGETS, AMOUNTS)
    expected = plain_loop(model, images, TARGETS, AMOUNTS, ALL_LAYERS, relative)
    assert list(results) == list(AMOUNTS)
    for kind, (dist, prob, top, top_prob) in expected.items():
        result = results[kind]
        assert result.kind == kind and result.layers == ALL_LAYERS
        assert result.amounts.tolist() == [float(a) for a in AMOUNTS[kind]]
        assert torch.equal(result.targets, TARGETS)
        for layer in ALL_LAYERS:
            assert result.distances[layer].shape == (2, len(AMOUNTS[kind]))
            # float32 noise scales with the feature vectors' size when distances are not divided by it
            scale = 1.0 if relative else float(result.reference_norm[layer].max())
            tolerance = {"rtol": DISTANCE_TOL["rtol"], "atol": DISTANCE_TOL["atol"] * scale}
            torch.testing.assert_close(result.distances[layer].double(), dist[layer], **tolerance)
        assert result.relative is relative
        torch.testing.assert_close(result.true_class_prob, prob, **PROB_TOL)
        torch.testing.assert_close(result.top_class_prob, top_prob, **PROB_TOL)
        assert torch.equal(result.top_class, top)
    # Not trivial: the transforms move layer 1 a lot and change the probabilities.
    assert results["translation"].distances[1][:, -1].min() > 0.3
    assert (results["rotation"].true_class_prob - results["rotation"].true_class_prob[:, :1]).abs().max() > 0.01


def test_reference_norm(model, images):
    result = Invariance(model, layers=(1, 7))(images, TARGETS, {"scale": [1.5]})["scale"]
    features, _ = relu_outputs(model, images)
    for layer in (1, 7):
        torch.testing.assert_close(result.reference_norm[layer], features[layer].norm(dim=1))


def test_identity_amounts(model, images):
    results = Invariance(model, batch_size=3)(
        images, TARGETS, {"translation": [0, 2], "scale": [3.0, 1.0], "rotation": [0.0, 360.0]}
    )
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1)
    identity = {"translation": 0, "scale": 1, "rotation": 0}
    for kind, result in results.items():
        t = identity[kind]
        for layer in (1, 7):
            assert torch.equal(result.distances[layer][:, t], torch.zeros(2))
            if kind != "rotation":  # (the rotation's other amount is a full turn)
                assert result.distances[layer][:, 1 - t].min() > 0
        torch.testing.assert_close(result.true_class_prob[:, t], probs[[0, 1], TARGETS], **PROB_TOL)
        torch.testing.assert_close(result.top_class_prob[:, t], probs.max(dim=1).values, **PROB_TOL)
        assert torch.equal(result.top_class[:, t], probs.argmax(dim=1))
    # A full turn is resampled by torchvision, not skipped: the same up to interpolation and float32 noise.
    full_turn = results["rotation"]
    assert all(full_turn.distances[layer][:, 1].max() < 1e-5 for layer in (1, 7))
    torch.testing.assert_close(full_turn.true_class_prob[:, 1], probs[[0, 1], TARGETS], rtol=1e-4, atol=1e-6)


def test_batch_size_does_not_change_results(model, images):
    amounts = {"translation": [-5, 2.5], "scale": [0.7, 1.3], "rotation": [15, 200]}
    runs = [Invariance(model, layers=(1, 5, 7), batch_size=n)(images, TARGETS, amounts) for n in (1, 7, 1000)]
    for other in runs[1:]:
        for kind in amounts:
            for layer in (1, 5, 7):
                torch.testing.assert_close(other[kind].distances[layer], runs[0][kind].distances[layer], **DISTANCE_TOL)
            torch.testing.assert_close(other[kind].true_class_prob, runs[0][kind].true_class_prob, **PROB_TOL)
            assert torch.equal(other[kind].top_class, runs[0][kind].top_class)


def test_channels_last_same_results(model, images):
    amounts = {"rotation": [30, 90]}
    plain = Invariance(model, channels_last=False)(images, TARGETS, amounts)["rotation"]
    fast = Invariance(model, channels_last=True)(images, TARGETS, amounts)["rotation"]
    for layer in (1, 7):
        torch.testing.assert_close(fast.distances[layer], plain.distances[layer], **DISTANCE_TOL)
    torch.testing.assert_close(fast.true_class_prob, plain.true_class_prob, **PROB_TOL)


def test_model_and_input_untouched(model, images):
    model.train()
    model.classifier[2].eval()  # a mixed state must come back as it was
    before = {name: module.training for name, module in model.named_modules()}
    weights = [p.detach().clone() for p in model.parameters()]
    inputs = images.clone().requires_grad_(True)
    try:
        results = Invariance(model)(inputs, TARGETS, {"translation": [3], "rotation": [45]})
        assert {name: module.training for name, module in model.named_modules()} == before
    finally:
        model.eval()
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    assert torch.equal(inputs.detach(), images) and inputs.grad is None
    for result in results.values():
        assert not any(v.requires_grad for v in [*result.distances.values(), result.true_class_prob])
    # Dropout was off: the same call twice gives the same numbers.
    again = Invariance(model)(images, TARGETS, {"translation": [3], "rotation": [45]})
    torch.testing.assert_close(again["rotation"].distances[7], results["rotation"].distances[7])


def test_zero_reference_features_give_nan_and_warn(model, images):
    silent = copy.deepcopy(model)
    with torch.no_grad():
        silent.features[0].bias.zero_()  # a zero image then has all-zero layer-1 features
    inputs = torch.stack([images[0], torch.zeros_like(images[0])])
    with pytest.warns(UserWarning, match=r"layer 1 features of image\(s\) \[1\] are all zero"):
        result = Invariance(silent, layers=(1, 7), relative=True)(inputs, TARGETS, {"translation": [0, 5]})[
            "translation"
        ]
    assert result.distances[1][1].isnan().all()
    assert result.distances[1][0].isfinite().all() and result.distances[1][0, 1] > 0
    assert result.distances[7].isfinite().all() and result.reference_norm[1][1] == 0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "amounts,match",
    [
        ({"shear": [1.0]}, r"unknown transformation 'shear'; expected one of \('translation', 'scale', 'rotation'\)"),
        ({"scale": []}, "no amounts for 'scale'; expected a non-empty sequence"),
        ({"rotation": [10, float("nan")]}, "rotation amount nan is not finite"),
        ({"translation": [float("inf")]}, "translation amount inf is not finite"),
        ({"scale": [1.0, 0.0]}, r"scale amount 0.0 must be > 0"),
        ({"scale": [-2]}, r"scale amount -2.0 must be > 0"),
        ({"rotation": ["ten"]}, "rotation amount 'ten' is not a number"),
        ({"rotation": 90}, "rotation amounts must be a sequence of numbers"),
        ({}, "amounts must be a non-empty mapping"),
    ],
)
def test_amount_errors(model, images, amounts, match):
    with pytest.raises(ValueError, match=match):
        Invariance(model)(images, TARGETS, amounts)


@pytest.mark.parametrize(
    "targets,match",
    [
        ([1, 2, 3], "got 3 targets for 2 images"),
        ([1, 10], r"target class\(es\) \[10\] out of range; expected classes in 0..9"),
        ([-1, 2], r"\[-1\] out of range"),
        ([0.5, 1.0], "class indices"),
    ],
)
def test_target_errors(model, images, targets, match):
    with pytest.raises(ValueError, match=match):
        Invariance(model)(images, targets, {"scale": [1.2]})


def test_image_and_option_errors(model, images):
    with pytest.raises(
        ValueError, match=r"images must be a 4-D \(B, C, H, W\) floating-point tensor, got \(3, 64, 64\)"
    ):
        Invariance(model)(images[0], TARGETS[:1], {"scale": [1.2]})
    with pytest.raises(ValueError, match="floating-point tensor, got .*int64"):
        Invariance(model)(images.long(), TARGETS, {"scale": [1.2]})
    with pytest.raises(ValueError, match=r"layer\(s\) \[8\] not in this network"):
        Invariance(model, layers=(1, 8))
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        Invariance(model, batch_size=0)


def test_errors_come_before_any_forward_pass(model, images):
    calls = []
    hook = model.features[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match="scale amount"):
            Invariance(model)(images, TARGETS, {"rotation": [10], "scale": [1.0, 0.0]})
    finally:
        hook.remove()
    assert calls == []


# ------------------------------------------------------------- transforms
def test_transform_conventions(images):
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 3] = 1  # top-right
    turned = transform_images(corner, "rotation", 90)
    assert turned[0, 0, 3, 3] == 1 and turned.sum() == 1  # clockwise on screen: to the bottom-right
    down = transform_images(images, "translation", 5, fill=0.5)
    assert torch.equal(down[..., :5, :], torch.full_like(down[..., :5, :], 0.5))
    torch.testing.assert_close(down[..., 5:, :], images[..., :-5, :])
    small = transform_images(images, "scale", 0.5, fill=-1.0)
    assert torch.equal(small[..., :8, :8], torch.full_like(small[..., :8, :8], -1.0))  # uncovered border: the fill
    before = images.clone()
    same = transform_images(images, "scale", 1.0)
    assert torch.equal(same, images) and same.data_ptr() != images.data_ptr()
    assert torch.equal(images, before)
    with pytest.raises(ValueError, match="unknown transformation 'flip'"):
        transform_images(images, "flip", 1)


def test_default_amounts():
    paper = default_amounts()
    assert list(paper) == list(TRANSFORMATIONS)
    assert paper["translation"] == [float(t) for t in range(-60, 61, 5)]
    assert paper["scale"][0] == 1.0 and paper["scale"][-1] == 1.8 and len(paper["scale"]) == 17
    assert paper["rotation"] == [float(a) for a in range(0, 361, 10)]
    small = default_amounts(64)["translation"]
    assert small[0] == -17 and small[-1] == 17 and 0.0 in small and all(t == int(t) for t in small)
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        default_amounts(0)


def test_as_arrays_and_frame(model, images, tmp_path):
    result = Invariance(model)(images, TARGETS, {"rotation": [0, 45, 90]})["rotation"]
    arrays = result.as_arrays(prefix="rotation_")
    np.savez(tmp_path / "inv.npz", **arrays)
    loaded = np.load(tmp_path / "inv.npz")
    assert str(loaded["rotation_kind"]) == "rotation"
    np.testing.assert_array_equal(loaded["rotation_distance_layer7"], result.distances[7].numpy())
    np.testing.assert_array_equal(loaded["rotation_amounts"], [0.0, 45.0, 90.0])
    assert loaded["rotation_reference_norm_layer1"].shape == (2,)

    pytest.importorskip("pandas")
    frame = result.to_frame()
    assert len(frame) == 6 and set(frame["kind"]) == {"rotation"}
    row = frame[(frame["amount"] == 45.0) & (frame["image"] == 1)].iloc[0]
    assert row["distance_layer1"] == pytest.approx(result.distances[1][1, 1].item())
    assert row["true_class_prob"] == pytest.approx(result.true_class_prob[1, 1].item())
    assert row["top_class"] == result.top_class[1, 1] and row["target"] == 7


# ----------------------------------------------------------------- figure
def test_figure(model, images, tmp_path):
    import matplotlib.pyplot as plt

    results = Invariance(model, layers=(1, 7))(
        images, TARGETS, {"rotation": [0, 90], "translation": [-4, 0, 4], "scale": [1, 1.5]}
    )
    with styled():
        figure = build_invariance_figure(results, image_labels=["cat", "dog"], title="ZFNet")
    try:
        assert texts_outside_canvas(figure) == []
        axes = figure.axes
        assert len(axes) == 3 * 3
        assert [axis.get_xlabel() for axis in axes[::3]] == [
            "Vertical translation (pixels)",
            "Scale (ratio)",
            "Rotation (degrees)",
        ]
        assert [axis.get_ylabel() for axis in axes[:3]] == [  # the measure used, the paper's by default
            "Euclidean distance ||f(Tx)-f(x)||,\nlayer 1",
            "Euclidean distance ||f(Tx)-f(x)||,\nlayer 7",
            "P(true class)",
        ]
        assert all(len(axis.get_lines()) == 2 for axis in axes)
        # one legend for every panel, below them: it covers no curve
        assert all(axis.get_legend() is None for axis in axes)
        (legend,) = figure.legends
        assert [text.get_text() for text in legend.get_texts()] == ["cat", "dog"]
        legend_box = legend.get_window_extent()
        assert all(legend_box.y1 <= axis.get_window_extent().y0 for axis in axes)
        np.testing.assert_allclose(axes[5].get_lines()[1].get_ydata(), results["scale"].true_class_prob[1].numpy())
    finally:
        plt.close(figure)

    path = invariance_figure({"scale": results["scale"]}, tmp_path / "figures" / "fig5.png", title="scale only")
    assert path.exists() and path.stat().st_size > 0 and path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="got 3 image_labels for 2 images"):
        build_invariance_figure(results, image_labels=["a", "b", "c"])

"""Correspondence analysis (section 5.2) against hand-computed Hamming sums and a plain loop of single passes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from zf_lightning.analysis.correspondence import (
    Box,
    Correspondence,
    check_boxes_inside,
    load_part_boxes,
    sign_hamming_delta,
)
from zf_lightning.testing.tiny_models import lively_tiny_zfnet

SIZE = 64
N = 4
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model():
    return lively_tiny_zfnet(10, SIZE)


@pytest.fixture(scope="module")
def images():
    return torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# Each image has its own eyes and nose, as annotated boxes of different images would be.
BOXES = [
    {"left_eye": Box(10 + i, 12, 22 + i, 22), "right_eye": Box(36, 12 + i, 50, 24 + i), "nose": Box(24, 30, 40 - i, 44)}
    for i in range(N)
]


# --------------------------------------------------------------------------------------- Hamming measure
def test_hamming_hand_computed():
    eps = torch.tensor(
        [
            [1.0, -1.0, 0.0, 2.0],  # signs + - 0 +
            [3.0, 0.0, 0.0, -1.0],  # signs + 0 0 -
            [-2.0, -5.0, 0.0, 4.0],  # signs - - 0 +
        ]
    )
    # H(0, 1) = 2 (positions 1: - vs 0, 3: + vs -); H(0, 2) = 1 (position 0); H(1, 2) = 3 (positions 0, 1, 3).
    # Position 2 is 0 everywhere and agrees. Ordered pairs count each unordered pair twice: 2 * 6 / D = 12 / 4.
    assert sign_hamming_delta(eps) == 3.0
    assert sign_hamming_delta(eps.to(torch.int8)) == 3.0
    assert sign_hamming_delta(torch.zeros(5, 7)) == 0.0
    assert sign_hamming_delta(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 1.0  # 2 ordered pairs x 1 difference / 2


def brute_force_pairs(eps: torch.Tensor) -> list[float]:
    """The paper's per-pair measure: H(sign eps_i, sign eps_j) / D for each pair i < j, by loops."""
    signs = torch.sign(eps)
    return [
        sum(int(a != b) for a, b in zip(signs[i].tolist(), signs[j].tolist())) / eps.shape[1]
        for i, j in itertools.combinations(range(len(signs)), 2)
    ]


def hull(boxes) -> Box:
    return Box(
        min(b.left for b in boxes), min(b.top for b in boxes), max(b.right for b in boxes), max(b.bottom for b in boxes)
    )


def brute_force_delta(eps: torch.Tensor) -> float:
    signs = torch.sign(eps)
    total = 0
    for i, j in itertools.permutations(range(len(signs)), 2):
        total += sum(int(a != b) for a, b in zip(signs[i].tolist(), signs[j].tolist()))
    return total / eps.shape[1]


@pytest.mark.parametrize("count,length", [(2, 1), (5, 37), (7, 120)])
def test_hamming_matches_double_loop(count, length):
    generator = torch.Generator().manual_seed(count)
    eps = torch.randn(count, length, generator=generator)
    eps[torch.rand(count, length, generator=generator) < 0.4] = 0.0  # many ties with zeros, as rectified features give
    assert sign_hamming_delta(eps) == pytest.approx(brute_force_delta(eps), abs=1e-12)


def test_hamming_errors():
    with pytest.raises(ValueError, match=r"2-D \(N, D\) tensor"):
        sign_hamming_delta(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        sign_hamming_delta(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]))


# ------------------------------------------------------------------------------------- plain reference
def reference_signs(model, images, boxes_per_image, fill=0.0):
    """sign(x - x~) per image at layers 5 and 7: one pass per image, features taken with forward hooks."""
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
    relus = {5: model.features[convs[4] + 1], 7: model.classifier[linears[1] + 1]}
    assert all(isinstance(relu, nn.ReLU) for relu in relus.values())
    captured = {}

    def keep(layer):
        return lambda module, inputs, output: captured.__setitem__(layer, output.flatten().clone())

    hooks = [relu.register_forward_hook(keep(layer)) for layer, relu in relus.items()]
    signs = {5: [], 7: []}
    try:
        with torch.no_grad():
            for image, box in zip(images, boxes_per_image):
                model(image[None])
                clean = dict(captured)
                occluded = image.clone()
                left, top, right, bottom = box
                occluded[:, top:bottom, left:right] = fill
                model(occluded[None])
                for layer in signs:
                    eps = clean[layer] - captured[layer]
                    scale = max(clean[layer].abs().max(), captured[layer].abs().max())
                    signs[layer].append(torch.where(eps.abs() > TOLERANCE * scale, torch.sign(eps), 0.0))
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: torch.stack(values) for layer, values in signs.items()}


def test_matches_plain_loop(model, images):
    result = Correspondence(model, repeats=3, seed=4, batch_size=5)(images, BOXES)
    assert result.parts == ["left_eye", "right_eye", "nose"] and result.layers == (5, 7)
    assert result.num_images == N and result.pairs == N * (N - 1)
    assert result.random_boxes.shape == (3, N, 3, 4)
    assert np.array_equal(result.part_boxes, np.array([[list(b[p]) for p in result.parts] for b in BOXES]))
    for part in result.parts:
        signs = reference_signs(model, images, [b[part] for b in BOXES])
        for layer in (5, 7):
            assert signs[layer].abs().sum() > 0  # not trivial: the occlusion changes the features
            assert result.deltas[part][layer] == pytest.approx([brute_force_delta(signs[layer])] * 3, abs=1e-9)
            pairs = brute_force_pairs(signs[layer])
            assert len(pairs) == N * (N - 1) // 2
            assert result.pair_deltas[part][layer] == pytest.approx(pairs, abs=1e-12)
            # the paper's Table 1 cell: mean ± std over the image pairs
            assert result.table1()[part][f"layer{layer}"] == pytest.approx(
                {"mean": np.mean(pairs), "std": np.std(pairs)}, abs=1e-12
            )
    random_pairs = {5: [], 7: []}
    for repeat in range(3):
        per_part = {5: [], 7: []}
        for index, part in enumerate(result.parts):
            boxes = [Box(*result.random_boxes[repeat, i, index].tolist()) for i in range(N)]
            assert [(b.height, b.width) for b in boxes] == [(b[part].height, b[part].width) for b in BOXES]
            # on the object: inside the box that holds the image's parts (no object box given)
            objects = [hull(parts.values()) for parts in BOXES]
            assert all(
                o.left <= b.left and o.top <= b.top and b.right <= o.right and b.bottom <= o.bottom
                for b, o in zip(boxes, objects)
            )
            signs = reference_signs(model, images, boxes)
            for layer in (5, 7):
                per_part[layer].append(brute_force_delta(signs[layer]))
                random_pairs[layer] += brute_force_pairs(signs[layer])
        for layer in (5, 7):
            assert result.deltas["random"][layer][repeat] == pytest.approx(np.mean(per_part[layer]), abs=1e-9)
    for layer in (5, 7):  # the Random row: over the pairs of every part's boxes of every repeat
        assert sorted(result.pair_deltas["random"][layer]) == pytest.approx(sorted(random_pairs[layer]), abs=1e-12)


def test_random_boxes_fall_inside_a_given_object_box_and_must_fit(model, images):
    objects = [Box(4, 6, 58, 60 - i) for i in range(N)]
    boxes = [{**parts, "object": objects[i]} for i, parts in enumerate(BOXES)]
    result = Correspondence(model, repeats=4, seed=2)(images, boxes)
    assert result.parts == ["left_eye", "right_eye", "nose"]  # "object" is no part
    assert np.array_equal(result.object_boxes, np.array(objects))
    for repeat, image, part in itertools.product(range(4), range(N), range(3)):
        left, top, right, bottom = result.random_boxes[repeat, image, part]
        o = objects[image]
        assert o.left <= left and o.top <= top and right <= o.right and bottom <= o.bottom
    small = [{**parts, "object": Box(20, 20, 30, 30)} for parts in BOXES]
    with pytest.raises(ValueError, match="larger than their image's 'object' box"):
        Correspondence(model, repeats=1)(images, small)
    with pytest.raises(ValueError, match="random control boxes cannot move; give each image an 'object' box"):
        Correspondence(model, repeats=1)(images, [{"patch": Box(26, 20, 38, 32)}] * N)


def test_fill_value(model, images):
    result = Correspondence(model, repeats=1, fill=1.5)(images, BOXES)
    signs = reference_signs(model, images, [b["nose"] for b in BOXES], fill=1.5)[7]
    assert result.deltas["nose"][7][0] == pytest.approx(brute_force_delta(signs), abs=1e-9)


def test_deterministic_and_batch_size_free(model, images):
    first = Correspondence(model, repeats=2, seed=7)(images, BOXES)
    again = Correspondence(model, repeats=2, seed=7, batch_size=3)(images, BOXES)
    plain = Correspondence(model, repeats=2, seed=7, batch_size=1, channels_last=False)(images, BOXES)
    other = Correspondence(model, repeats=2, seed=8)(images, BOXES)
    for result in (again, plain):
        assert np.array_equal(result.random_boxes, first.random_boxes)
        np.testing.assert_array_equal(result.as_arrays()["deltas"], first.as_arrays()["deltas"])
    assert not np.array_equal(other.random_boxes, first.random_boxes)
    assert not np.array_equal(first.random_boxes[0], first.random_boxes[1])  # repeats draw new boxes
    # fixed boxes are the same every repeat: no spread over repeats (the literal double sum's reading) ...
    assert np.all(first.to_frame(per_pair=False).loc[first.parts, (5, "std")] == 0)
    # ... while the paper's ± over image pairs is not 0
    assert np.all(first.to_frame().loc[first.parts, (5, "std")] > 0)


def test_part_lower_than_random_when_consistent_by_design(model):
    """Each image has its own faint random background, but the "part", a bright patch, is identical and at
    the same place in every image. Masking it removes the same strong input everywhere: the same layer-5
    positions (those that see the patch) change, in the same direction, and fc7 moves from "patch + faint
    background" towards "faint background" alike in every image. A random box of the same size sits
    elsewhere in each image and masks different faint background: different positions and directions."""
    generator = torch.Generator().manual_seed(3)
    images = 0.5 * torch.randn(5, 3, SIZE, SIZE, generator=generator)
    images[:, :, 20:32, 26:38] = 3 * torch.randn(3, 12, 12, generator=generator).abs()
    boxes = [{"patch": Box(26, 20, 38, 32), "object": Box(0, 0, SIZE, SIZE)}] * 5
    result = Correspondence(model, repeats=5, seed=0)(images, boxes)
    frame = result.to_frame(per_pair=True)
    for layer in (5, 7):
        part, random = frame.loc["patch", (layer, "mean")], frame.loc["random", (layer, "mean")]
        assert part < 0.7 * random, (layer, part, random)


# ------------------------------------------------------------------------------------------ table output
def test_tables(model, images):
    result = Correspondence(model, repeats=2)(images, BOXES)
    markdown = result.to_markdown()
    assert "Layer 5" in markdown and "Layer 7" in markdown and "Random" in markdown
    for part in result.parts:
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {part} |"))
        assert line.count("±") == 2
    frame = result.to_frame(per_pair=False)
    assert list(frame.index) == [*result.parts, "random"]
    assert frame.loc["nose", (7, "mean")] == pytest.approx(result.deltas["nose"][7].mean())
    assert frame.loc["random", (5, "std")] == pytest.approx(result.deltas["random"][5].std())
    per_pair = result.to_frame(per_pair=True)
    # the mean over unordered pairs is the double sum over ordered pairs divided by their number
    assert per_pair.loc["nose", (5, "mean")] == pytest.approx(frame.loc["nose", (5, "mean")] / result.pairs)
    assert per_pair.loc["nose", (5, "std")] == pytest.approx(np.std(result.pair_deltas["nose"][5]))
    assert f"{per_pair.loc['random', (7, 'mean')]:.3f} ±" in result.to_markdown(per_pair=True)
    arrays = result.as_arrays()
    assert arrays["deltas"].shape == (4, 2, 2) and list(arrays["rows"]) == [*result.parts, "random"]


def test_model_and_inputs_untouched(model, images):
    model.train()
    before = {name: module.training for name, module in model.named_modules()}
    weights = [p.detach().clone() for p in model.parameters()]
    inputs = images.clone().requires_grad_(True)
    try:
        Correspondence(model, repeats=1)(inputs, BOXES)
        assert {name: module.training for name, module in model.named_modules()} == before
    finally:
        model.eval()
    assert torch.equal(inputs.detach(), images) and inputs.grad is None
    assert all(p.grad is None and torch.equal(p, w) for p, w in zip(model.parameters(), weights))


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "options,match",
    [
        ({"repeats": 0}, "repeats must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"tolerance": -1.0}, "tolerance must be >= 0"),
        ({"layers": (5, 8)}, r"Correspondence: .*\[8\] not in this network"),
    ],
)
def test_option_errors(model, options, match):
    with pytest.raises(ValueError, match=match):
        Correspondence(model, **options)


@pytest.mark.parametrize(
    "which,boxes,match",
    [
        (slice(0, 1), BOXES[:1], "at least 2 images"),
        (slice(None), BOXES[:3], "got 3 entries for 4 images"),
        (slice(None), [*BOXES[:3], {"left_eye": Box(1, 1, 5, 5)}], r"image '3' lacks \['right_eye', 'nose'\]"),
        (
            slice(None),
            [*BOXES[:3], {**BOXES[3], "nose": Box(40, 50, 60, 70)}],
            r"box nose of image 3 \[40, 50, 60, 70\] lies outside the image \(64 x 64\)",
        ),
        (slice(None), [*BOXES[:3], {**BOXES[3], "nose": (0, 0, 80, 80)}], "lies outside the image"),
        (slice(None), [*BOXES[:3], {**BOXES[3], "nose": (5, 5, 5, 9)}], "is empty"),
    ],
)
def test_input_errors(model, images, which, boxes, match):
    correspondence = Correspondence(model)
    correspondence.extractor = None  # any forward pass would fail: the checks come first
    with pytest.raises(ValueError, match=match):
        correspondence(images[which], boxes)


def test_load_part_boxes_json_and_yaml(tmp_path):
    data = {
        "dog1.jpg": {"left_eye": [10, 12, 22, 22], "nose": [24, 30, 40, 44]},
        "dog2.jpg": {"nose": [1, 2, 3, 4], "left_eye": [0, 0, 8, 8]},
    }
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    (tmp_path / "boxes.yaml").write_text(
        "dog1.jpg:\n  left_eye: [10, 12, 22, 22]\n  nose: [24, 30, 40, 44]\n"
        "dog2.jpg:\n  nose: [1, 2, 3, 4]\n  left_eye: [0, 0, 8, 8]\n"
    )
    for name in ("boxes.json", "boxes.yaml"):
        boxes = load_part_boxes(tmp_path / name)
        assert boxes == {
            "dog1.jpg": {"left_eye": Box(10, 12, 22, 22), "nose": Box(24, 30, 40, 44)},
            "dog2.jpg": {"left_eye": Box(0, 0, 8, 8), "nose": Box(1, 2, 3, 4)},
        }
        assert list(boxes["dog2.jpg"]) == ["left_eye", "nose"]  # the first image's part order
        assert boxes["dog1.jpg"]["nose"].height == 14 and boxes["dog1.jpg"]["nose"].width == 16
    check_boxes_inside(boxes, {"dog1.jpg": (64, 48), "dog2.jpg": (8, 8)})


@pytest.mark.parametrize(
    "text,match",
    [
        ("[1, 2]", "expected a mapping of image file name"),
        ('{"a.jpg": [1, 2, 3, 4]}', "image 'a.jpg' must map part names to boxes"),
        ('{"a.jpg": {"nose": [1, 2, 3]}}', r"box 'nose' of image 'a.jpg' must be 4 integers"),
        ('{"a.jpg": {"nose": [1, 2, 3.5, 4]}}', r"box 'nose' of image 'a.jpg' must be 4 integers"),
        ('{"a.jpg": {"nose": [5, 2, 3, 4]}}', r"box 'nose' of image 'a.jpg' is empty"),
        ('{"a.jpg": {"nose": [1, 4, 3, 4]}}', "is empty"),
        ('{"a.jpg": {"nose": [-1, 2, 3, 4]}}', "negative coordinate"),
        (
            '{"a.jpg": {"nose": [1, 2, 3, 4], "eye": [1, 2, 3, 4]}, "b.jpg": {"nose": [1, 2, 3, 4]}}',
            r"'b.jpg' lacks \['eye'\]",
        ),
        (
            '{"a.jpg": {"nose": [1, 2, 3, 4]}, "b.jpg": {"nose": [1, 2, 3, 4], "ear": [0, 0, 1, 1]}}',
            r"'b.jpg' has extra \['ear'\]",
        ),
        ("{not json", "could not be parsed"),
    ],
)
def test_load_part_boxes_errors(tmp_path, text, match):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as error:
        load_part_boxes(path)
    assert str(path) in str(error.value)


def test_load_part_boxes_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml'?: no such file"):
        load_part_boxes(tmp_path / "missing.yaml")
    (tmp_path / "boxes.txt").write_text("{}")
    with pytest.raises(ValueError, match=r"boxes.txt'?: expected a .json, .yaml or .yml file, got '.txt'"):
        load_part_boxes(tmp_path / "boxes.txt")


def test_check_boxes_inside_errors():
    boxes = {"a.jpg": {"nose": Box(10, 20, 30, 40)}, "b.jpg": {"nose": Box(0, 0, 4, 4)}}
    with pytest.raises(ValueError, match=r"box nose of a.jpg \[10, 20, 30, 40\] lies outside the image \(32 x 36\)"):
        check_boxes_inside(boxes, {"a.jpg": (36, 32), "b.jpg": (8, 8)})
    with pytest.raises(ValueError, match=r"\['b.jpg'\] have boxes but no image; image\(s\) \['c.jpg'\] have no boxes"):
        check_boxes_inside(boxes, {"a.jpg": (64, 64), "c.jpg": (8, 8)})

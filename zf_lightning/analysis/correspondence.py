"""Correspondence analysis: Zeiler & Fergus, arXiv 1311.2901v3, section 4.3 and Table 1 (eye and nose occlusions).

The same part (left eye, right eye, nose, ...) is masked out in each of N images of objects in the same
pose, and we measure how consistently the masking changes a layer's feature vector across the images:

    eps_i = x_i - x~_i
    d_ij = H(sign(eps_i), sign(eps_j)) / D                          for each pair of images i < j
    Delta = sum over ordered pairs (i, j), i != j, of d_ij           (the paper's formula)

x_i and x~_i are the layer's feature vectors (`LayerFeatures`: the rectified conv output flattened for
layers 1..5, the rectified fc6 / fc7 output for 6 and 7) of image i and of its occluded copy; D is the
feature length and H the Hamming distance: the number of positions where the signs differ. A lower value
means a more consistent change.

What the paper's Table 1 reports. Its numbers (0.067 ... 0.107) are far below the double sum over its 5 images'
20 ordered pairs, so they are per pair: the mean of d_ij. Its part rows carry a ± (0.007 to 0.017) although a
fixed part box has nothing random about it; the only spread such a row has is over the image pairs. So the
table here is, as the default (`per_pair=True`): mean ± std of d_ij over the N (N - 1) / 2 image pairs, and for
the Random row over the pairs of every part's random boxes in every repeat. `per_pair=False` gives the literal
double sum Delta instead, ± over repeats (0 for the part rows).

Signs are -1, 0 and +1 (`torch.sign`), and 0 differs from +1 and from -1. The features are rectified, so
many entries are 0 in both the image and its occluded copy; their eps is 0 in every image and they agree.

Tolerance: the same image gives features that differ by up to about 3e-7 of the layer's largest
activation when it goes through the network in batches of different sizes (measured on CPU, float32,
full-size ZFNet), so an entry the occlusion leaves unchanged could get a random sign from rounding noise.
An eps entry counts as 0 when |eps| <= tolerance * max(max_k |x_i[k]|, max_k |x~_i[k]|) (default 1e-5,
about 30 times that noise; it also zeroes the rare real changes that small). tolerance=0 takes the raw
signs. On a GPU, TF32 convolutions (PyTorch's default for cuDNN) round to about 1e-3: turn TF32 off
(`torch.backends.cudnn.allow_tf32 = False`) or raise the tolerance.

Boxes are `Box(left, top, right, bottom)` in pixels of the network input, right and bottom exclusive;
the occluded copy has the box filled with `fill` in every channel (0 = the mean pixel of mean-subtracted
inputs, as in the occlusion analysis).

Random control ("random object parts"): for each repeat, each image and each part a box of that part's size
(the same height and width as the image's part box) is drawn at a uniformly random position that lies fully
inside the object: the image's `object` box when the boxes file gives one, else the smallest box holding all
its part boxes (one `torch.Generator` seeded with `seed`, drawn in the order repeat, image, part: top, then
left). The "random" row of a repeat is the mean over parts of the random boxes' Delta. Means and stds are
population statistics (numpy's default, ddof=0).

Efficiency: the originals go through the network once; the occluded copies (images x parts, then repeats
x images x parts for the control) go through `LayerFeatures` in batches of `batch_size` copies, and each
batch is reduced at once to int8 sign vectors. Delta comes from counts of each sign per position: the
ordered pairs that differ at a position number N^2 - sum_s n_s^2.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import nn

from zf_lightning.analysis.features import LayerFeatures
from zf_lightning.models.layers import LayerKey
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.validation import check_int

if TYPE_CHECKING:
    import pandas as pd

RANDOM = "random"
OBJECT = "object"  # the key of a boxes file's object box: where the random control boxes are drawn


class Box(NamedTuple):
    """A rectangle in pixels of the network input; right and bottom are exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


# ------------------------------------------------------------------------------------------ Hamming measure
def pair_distances(signs: torch.Tensor) -> np.ndarray:
    """(N (N - 1) / 2,) float64: H(sign_i, sign_j) / D for each pair i < j of the rows of `signs` (N, D), in the
    order (0, 1), (0, 2), ..., (1, 2), ...; signs are compared as they are (-1, 0, +1)."""
    if not isinstance(signs, torch.Tensor) or signs.dim() != 2 or signs.shape[1] == 0:
        shape = tuple(signs.shape) if isinstance(signs, torch.Tensor) else type(signs).__name__
        raise InputError(f"pair_distances: signs must be a 2-D (N, D) tensor with D >= 1, got {shape}")
    first, second = torch.triu_indices(signs.shape[0], signs.shape[0], offset=1)
    differ = torch.stack([(signs[i] != signs[j]).sum() for i, j in zip(first.tolist(), second.tolist())])
    return differ.double().numpy() / signs.shape[1] if len(first) else np.zeros(0)


def sign_hamming_delta(eps: torch.Tensor) -> float:
    """Sum over ordered pairs i != j of the Hamming distance between sign(eps_i) and sign(eps_j), over D.

    `eps` is (N, D); 0 is a sign of its own (see the module docstring). Divide by N (N - 1) for the
    per-pair mean.
    """
    if not isinstance(eps, torch.Tensor) or eps.dim() != 2 or eps.shape[1] == 0:
        shape = tuple(eps.shape) if isinstance(eps, torch.Tensor) else type(eps).__name__
        raise InputError(f"sign_hamming_delta: eps must be a 2-D (N, D) tensor with D >= 1, got {shape}")
    if eps.is_floating_point() and torch.isnan(eps).any():
        raise InputError("sign_hamming_delta: eps contains NaN; expected finite differences")
    signs = torch.sign(eps)
    count, length = eps.shape
    same = sum(((signs == value).sum(dim=0, dtype=torch.int64) ** 2).sum() for value in (-1, 0, 1))
    return float(count * count * length - int(same)) / length


# --------------------------------------------------------------------------------------------------- boxes
def _as_box(value: object, where: str) -> Box:
    """`value` as a Box: 4 integers with 0 <= left < right and 0 <= top < bottom."""
    expected = "4 integers [left, top, right, bottom]"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 4:
        raise InputError(f"{where} must be {expected}, got {value!r}")
    numbers = []
    for v in value:
        if isinstance(v, bool):
            raise InputError(f"{where} must be {expected}, got {value!r}")
        try:
            numbers.append(operator.index(v))
        except TypeError:
            raise InputError(f"{where} must be {expected}, got {value!r}") from None
    box = Box(*numbers)
    if min(box) < 0:
        raise InputError(f"{where} has a negative coordinate: {list(box)}; expected pixel coordinates >= 0")
    if box.left >= box.right or box.top >= box.bottom:
        raise InputError(f"{where} is empty: {list(box)}; expected left < right and top < bottom")
    return box


def _check_boxes(boxes: Mapping[str, Mapping], where: str) -> dict[str, dict[str, Box]]:
    """Validated {image: {part: Box}}, every image with the same part names (in the first image's order)."""
    if not isinstance(boxes, Mapping) or not boxes:
        raise InputError(f"{where}: expected a non-empty mapping of image -> {{part -> box}}, got {boxes!r}")
    out: dict[str, dict[str, Box]] = {}
    for image, parts in boxes.items():
        if not isinstance(parts, Mapping) or not parts:
            raise InputError(f"{where}: image {image!r} must map part names to boxes, got {parts!r}")
        out[str(image)] = {
            str(part): _as_box(box, f"{where}: box {part!r} of image {image!r}") for part, box in parts.items()
        }
    first, names = next(iter(out.items()))
    for image, parts in out.items():
        missing = [part for part in names if part not in parts]
        extra = [part for part in parts if part not in names]
        if missing or extra:
            raise InputError(
                f"{where}: every image must have the same parts as {first!r} ({list(names)}); image {image!r}"
                + (f" lacks {missing}" if missing else "")
                + (" and" if missing and extra else "")
                + (f" has extra {extra}" if extra else "")
            )
    return {image: {part: parts[part] for part in names} for image, parts in out.items()}


def load_part_boxes(path: str | Path) -> dict[str, dict[str, Box]]:
    """{image file name: {part: Box}} from a .json, .yaml or .yml file of {image: {part: [l, t, r, b]}}."""
    from zf_lightning.data.user_images import load_mapping

    return _check_boxes(load_mapping(path, "part boxes file"), f"part boxes file {path}")


def check_boxes_inside(boxes: Mapping[str, Mapping[str, Box]], image_sizes: Mapping[str, tuple[int, int]]) -> None:
    """Raise ValueError unless the same images are in both and every box lies inside its (height, width) image."""
    only_boxes = [image for image in boxes if image not in image_sizes]
    only_images = [image for image in image_sizes if image not in boxes]
    if only_boxes or only_images:
        raise InputError(
            "part boxes and images do not match:"
            + (f" image(s) {only_boxes} have boxes but no image" if only_boxes else "")
            + (";" if only_boxes and only_images else "")
            + (f" image(s) {only_images} have no boxes" if only_images else "")
        )
    for image, parts in boxes.items():
        height, width = image_sizes[image]
        for part, box in parts.items():
            if min(box) < 0 or box.right > width or box.bottom > height:
                raise InputError(
                    f"box {part} of {image} {list(box)} lies outside the image ({width} x {height}); expected "
                    f"0 <= left < right <= {width} and 0 <= top < bottom <= {height}"
                )


# -------------------------------------------------------------------------------------------------- result
@dataclass
class CorrespondenceResult:
    """Delta per row (each part, then "random") and layer, for each repeat."""

    parts: list[str]
    layers: tuple[LayerKey, ...]
    repeats: int
    num_images: int
    deltas: dict[str, dict[LayerKey, np.ndarray]]  # {row: {layer: (repeats,)}}: the double sum Delta
    part_boxes: np.ndarray  # (N, parts, 4) int64: the fixed boxes (left, top, right, bottom)
    random_boxes: np.ndarray  # (repeats, N, parts, 4) int64: the drawn control boxes
    # {row: {layer: d_ij of every image pair}}: (pairs,) for a part, (repeats * parts * pairs,) for "random"
    pair_deltas: dict[str, dict[LayerKey, np.ndarray]] = dataclasses.field(default_factory=dict)
    object_boxes: np.ndarray | None = None  # (N, 4): where the random boxes were drawn

    @property
    def pairs(self) -> int:
        """Ordered image pairs in Delta: divide by it for the per-pair mean."""
        return self.num_images * (self.num_images - 1)

    @property
    def rows(self) -> list[str]:
        return [*self.parts, RANDOM]

    def values(self, row: str, layer: LayerKey, per_pair: bool = True) -> np.ndarray:
        """What a cell's mean ± std is taken over: d_ij of the image pairs (`per_pair`, the paper's Table 1), or
        the double sum Delta of each repeat."""
        return self.pair_deltas[row][layer] if per_pair else self.deltas[row][layer]

    def to_frame(self, per_pair: bool = True) -> pd.DataFrame:
        """pandas DataFrame: rows parts then "random", columns (layer, "mean" | "std") (see `values`)."""
        import pandas as pd

        columns = pd.MultiIndex.from_product([self.layers, ["mean", "std"]], names=["layer", "stat"])
        values = [
            [stat(self.values(row, layer, per_pair)) for layer in self.layers for stat in (np.mean, np.std)]
            for row in self.rows
        ]
        return pd.DataFrame(values, index=pd.Index(self.rows, name="occlusion"), columns=columns)

    def table1(self, per_pair: bool = True) -> dict[str, dict[str, dict[str, float]]]:
        """{row key: {"layerL": {"mean", "std"}}} for summary.json and zf-tables' Table 1; row keys are the part
        names in lower case with "_" for spaces ("Right eye" -> "right_eye"), and "random"."""
        return {
            table1_key(row): {
                f"layer{layer}": {
                    "mean": float(np.mean(self.values(row, layer, per_pair))),
                    "std": float(np.std(self.values(row, layer, per_pair))),
                }
                for layer in self.layers
            }
            for row in self.rows
        }

    def to_markdown(self, per_pair: bool = True, digits: int = 3) -> str:
        """The paper's table: rows parts and Random, columns "Layer 5", "Layer 7", cells "mean ± std"."""
        header = ["Occlusion location", *(f"Layer {layer}" for layer in self.layers)]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":---:"] * len(self.layers)) + "|"]
        for row in self.rows:
            cells = [
                f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"
                for values in (self.values(row, layer, per_pair) for layer in self.layers)
            ]
            lines.append("| " + " | ".join(["Random" if row == RANDOM else row, *cells]) + " |")
        return "\n".join(lines) + "\n"

    def as_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for `np.savez`; `deltas` is (rows, layers, repeats) in the order of `rows`, `layers`."""
        return {
            "rows": np.array(self.rows),
            "parts": np.array(self.parts),
            "layers": np.array(self.layers),
            "deltas": np.array([[self.deltas[row][layer] for layer in self.layers] for row in self.rows]),
            "pairs": np.array(self.pairs),
            "pair_deltas": np.array(
                [[self.pair_deltas[row][layer] for layer in self.layers] for row in self.parts]
            ),  # (parts, layers, pairs)
            "random_pair_deltas": np.array([self.pair_deltas[RANDOM][layer] for layer in self.layers]),
            "part_boxes": self.part_boxes,
            "random_boxes": self.random_boxes,
            **({"object_boxes": self.object_boxes} if self.object_boxes is not None else {}),
        }


# -------------------------------------------------------------------------------------------------- engine
class Correspondence:
    """Delta of each part and of random boxes of the parts' sizes (see the module docstring).

    Args:
        model: a network `LayerFeatures` accepts (a `PaperConvNet`).
        layers: paper layer numbers (5 and 7 in the paper).
        repeats: how many times the random boxes are drawn (the part rows are the same in each).
        seed: seeds the generator of the random boxes.
        batch_size: occluded copies per forward pass (the memory budget).
        fill: the value pasted into each box (0 = the mean pixel of mean-subtracted inputs).
        tolerance: |eps| at most this times the larger of the two vectors' largest |entry| counts as 0.
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerKey] = (5, 7),
        repeats: int = 5,
        seed: int = 0,
        batch_size: int = 64,
        fill: float = 0.0,
        tolerance: float = 1e-5,
        channels_last: bool = True,
    ) -> None:
        for name, value in (("repeats", repeats), ("batch_size", batch_size)):
            check_int(value, f"Correspondence: {name}")
        if not tolerance >= 0:
            raise InputError(f"Correspondence: tolerance must be >= 0, got {tolerance!r}")
        try:
            self.extractor = LayerFeatures(model, layers, channels_last=channels_last)
        except ValueError as error:
            raise InputError(f"Correspondence: {error}") from None
        self.layers = tuple(self.extractor.layers)
        self.repeats, self.seed, self.batch_size = repeats, int(seed), batch_size
        self.fill, self.tolerance = float(fill), float(tolerance)

    def _check(self, images: object, boxes: object) -> dict[str, dict[str, Box]]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"Correspondence: images must be a 4-D (N, C, H, W) tensor, got {shape}")
        count, _, height, width = images.shape
        if count < 2:
            raise InputError(f"Correspondence: needs at least 2 images to compare, got {count}")
        if isinstance(boxes, Mapping) or not isinstance(boxes, Sequence) or len(boxes) != count:
            got = f"{len(boxes)} entries" if isinstance(boxes, Sequence) else type(boxes).__name__
            raise InputError(
                f"Correspondence: boxes must be a sequence with one {{part: box}} mapping per image; got {got} for "
                f"{count} images"
            )
        named = _check_boxes({str(i): parts for i, parts in enumerate(boxes)}, "Correspondence")
        # Inside the image also means a random box of the part's size fits somewhere.
        labelled = {f"image {i}": parts for i, parts in named.items()}
        check_boxes_inside(labelled, {image: (height, width) for image in labelled})
        return named

    def _draw_random_boxes(self, part_boxes: np.ndarray, objects: np.ndarray) -> np.ndarray:
        """(repeats, N, parts, 4): boxes of each part box's size at uniformly random positions inside the image's
        object box (N, 4)."""
        generator = torch.Generator().manual_seed(self.seed)
        out = np.empty((self.repeats, *part_boxes.shape), dtype=np.int64)
        for repeat in range(self.repeats):
            for image, parts in enumerate(part_boxes):
                object_left, object_top, object_right, object_bottom = (int(v) for v in objects[image])
                for index, (left, top, right, bottom) in enumerate(parts):
                    box_height, box_width = bottom - top, right - left
                    rows, cols = object_bottom - object_top - box_height + 1, object_right - object_left - box_width + 1
                    new_top = object_top + int(torch.randint(rows, (1,), generator=generator))
                    new_left = object_left + int(torch.randint(cols, (1,), generator=generator))
                    out[repeat, image, index] = (new_left, new_top, new_left + box_width, new_top + box_height)
        return out

    def _signs(
        self,
        images: torch.Tensor,
        originals: Mapping[LayerKey, torch.Tensor],
        image_index: torch.Tensor,
        boxes: np.ndarray,
    ) -> dict[LayerKey, torch.Tensor]:
        """{layer: (copies, D) int8}: sign(x - x~) of the occluded copies, through the network in batches."""
        signs = {layer: torch.empty(len(boxes), originals[layer].shape[1], dtype=torch.int8) for layer in self.layers}
        for start in range(0, len(boxes), self.batch_size):
            stop = min(start + self.batch_size, len(boxes))
            which = image_index[start:stop]
            copies = images.index_select(0, which.to(images.device))  # a new tensor: the inputs stay as they were
            for copy, (left, top, right, bottom) in zip(copies, boxes[start:stop].tolist()):
                copy[:, top:bottom, left:right] = self.fill
            occluded = self.extractor(copies).features
            for layer in self.layers:
                clean = originals[layer].index_select(0, which.to(images.device))
                eps = clean - occluded[layer]
                scale = torch.maximum(clean.abs().amax(dim=1), occluded[layer].abs().amax(dim=1))
                keep = eps.abs() > self.tolerance * scale[:, None]
                signs[layer][start:stop] = (torch.sign(eps) * keep).to(torch.int8).cpu()
        return signs

    def compute(self, images: torch.Tensor, boxes: Sequence[Mapping[str, Box]]) -> CorrespondenceResult:
        """Delta of `images` (N, C, H, W), mean-subtracted, with `boxes[i]` = {part: Box} of image i."""
        named = self._check(images, boxes)
        parts = [part for part in next(iter(named.values())) if part != OBJECT]
        if not parts:
            raise InputError(f"Correspondence: the boxes name only {OBJECT!r}; expected parts to occlude as well")
        count, _, height, width = images.shape
        part_boxes = np.array([[named[image][part] for part in parts] for image in named], dtype=np.int64)
        objects = np.array(
            [
                named[image][OBJECT]
                if OBJECT in named[image]
                else (boxes_[:, 0].min(), boxes_[:, 1].min(), boxes_[:, 2].max(), boxes_[:, 3].max())
                for image, boxes_ in zip(named, part_boxes)
            ],
            dtype=np.int64,
        )
        too_big = [
            (i, parts[p])
            for i, image_boxes in enumerate(part_boxes)
            for p, (left, top, right, bottom) in enumerate(image_boxes)
            if right - left > objects[i, 2] - objects[i, 0] or bottom - top > objects[i, 3] - objects[i, 1]
        ]
        if too_big:
            raise InputError(
                f"Correspondence: part box(es) larger than their image's {OBJECT!r} box (image index, part): "
                f"{too_big}; random boxes of a part's size must fit inside the object"
            )
        sizes = part_boxes[..., 2:] - part_boxes[..., :2]  # (N, parts, [width, height])
        if np.all(sizes == (objects[:, None, 2:] - objects[:, None, :2])):
            raise InputError(
                f"Correspondence: every part box fills its image's object region, so the random control boxes "
                f"cannot move; give each image an {OBJECT!r} box (the whole object) in the boxes file"
            )
        random_boxes = self._draw_random_boxes(part_boxes, objects)

        with torch.no_grad():
            images = images.detach()
            chunks: dict[LayerKey, list[torch.Tensor]] = {layer: [] for layer in self.layers}
            for start in range(0, count, self.batch_size):
                for layer, values in self.extractor(images[start : start + self.batch_size]).features.items():
                    chunks[layer].append(values)
            originals = {layer: torch.cat(values) for layer, values in chunks.items()}
            # Copies in the order (image, part), then (repeat, image, part): the reshapes below undo it.
            all_boxes = np.concatenate([part_boxes.reshape(-1, 4), random_boxes.reshape(-1, 4)])
            image_index = torch.arange(count).repeat_interleave(len(parts)).repeat(1 + self.repeats)
            signs = self._signs(images, originals, image_index, all_boxes)

        fixed = count * len(parts)
        deltas: dict[str, dict[LayerKey, np.ndarray]] = {row: {} for row in [*parts, RANDOM]}
        pair_deltas: dict[str, dict[LayerKey, np.ndarray]] = {row: {} for row in [*parts, RANDOM]}
        for layer, values in signs.items():
            part_signs = values[:fixed].reshape(count, len(parts), -1)
            random_signs = values[fixed:].reshape(self.repeats, count, len(parts), -1)
            for index, part in enumerate(parts):
                deltas[part][layer] = np.full(self.repeats, sign_hamming_delta(part_signs[:, index]))
                pair_deltas[part][layer] = pair_distances(part_signs[:, index])
            deltas[RANDOM][layer] = np.array(
                [
                    np.mean([sign_hamming_delta(random_signs[r, :, p]) for p in range(len(parts))])
                    for r in range(self.repeats)
                ]
            )
            pair_deltas[RANDOM][layer] = np.concatenate(
                [pair_distances(random_signs[r, :, p]) for r in range(self.repeats) for p in range(len(parts))]
            )
        return CorrespondenceResult(
            parts=parts,
            layers=self.layers,
            repeats=self.repeats,
            num_images=count,
            deltas=deltas,
            part_boxes=part_boxes,
            random_boxes=random_boxes,
            pair_deltas=pair_deltas,
            object_boxes=objects,
        )

    __call__ = compute


def table1_key(row: str) -> str:
    """A row of the correspondence table as zf-tables' Table 1 names it: "Right eye" -> "right_eye"."""
    return "_".join(row.lower().split())

"""Feature invariance to translation, scale and rotation: Zeiler & Fergus, arXiv 1311.2901v3, section 4
("Convnet Visualization", its "Feature Invariance" paragraph) and Fig. 5.

Inputs are network inputs that are already normalised (the mean image subtracted, so 0 is the mean
pixel), shape (B, C, H, W), with their correct classes `targets` (B,).

Transformations
---------------
Each is `torchvision.transforms.v2.functional.affine` about the image centre with bilinear
interpolation; pixels that the transformed image does not cover are filled with `fill` (default 0.0,
the mean pixel, as the occlusion analysis greys out squares). torchvision blends the fill in with the
interpolated coverage mask, so border pixels fade smoothly into it.

- "translation": a vertical shift by `amount` pixels, positive = down (`translate=[0, amount]`);
  identity 0. Integer shifts move rows exactly.
- "scale": a zoom by the factor `amount` (`scale=amount`), > 1 enlarges, < 1 shrinks (the border is
  filled); identity 1.0; must be > 0.
- "rotation": `angle=amount` degrees. torchvision's `affine` turns *clockwise* as the image is
  displayed (row 0 at the top) for a positive angle: 90 moves the top-right corner to the bottom-right,
  i.e. `torch.rot90(x, k=-1, dims=(-2, -1))` on a square image; identity 0.

An identity amount returns an unmodified copy of the images (no resampling), and `Invariance` takes
its measures from the reference pass of the originals (distance exactly 0, the original probabilities).

Measures
--------
For each transformation T, amount t, image x and layer l in `layers` (paper numbering, see
`LayerFeatures`: 1..5 the rectified conv maps, 6 and 7 the rectified fc6 / fc7 outputs):

    d_l(t) = || f_l(T_t x) - f_l(x) ||_2                        (relative=False, the default: the paper's)
    d_l(t) = || f_l(T_t x) - f_l(x) ||_2 / || f_l(x) ||_2       (relative=True)

with f_l the flattened feature vector. The paper plots the Euclidean distance between the features of
the original and the transformed image (Fig. 5's caption). Divided by the norm of the original's features
(relative distance: 0 at the identity, 1 for a change as large as the feature vector itself), layer 1 and
layer 7 share one comparable axis; that reading is kept as `relative=True`. With `relative=True`, where
|| f_l(x) || is 0 the distance is NaN and a warning names the image and layer. For every amount we also
record the softmax probability of the correct class, and the most probable class (ties to the lowest index,
as `argmax`) with its probability.

Efficiency
----------
The reference features of the originals come from one forward pass. The transformed copies of all
images for all (non-identity) amounts of one transformation go through the network in batches of
`batch_size` copies (one `LayerFeatures` pass per batch: eval mode, no grad, module modes restored), and
each batch is reduced to distances at once: the features of all copies are never held together (ZFNet's
layer 1 alone is 1.2M floats per 224 px image).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, SupportsFloat

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode

from zf_lightning.analysis.features import LayerFeatures, LayerOutputs
from zf_lightning.models.layers import LayerKey
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.validation import check_int

if TYPE_CHECKING:
    import pandas as pd

TRANSFORMATIONS = ("translation", "scale", "rotation")
IDENTITY = {"translation": 0.0, "scale": 1.0, "rotation": 0.0}


def default_amounts(image_size: int = 224) -> dict[str, list[float]]:
    """Amounts spanning the axes of the paper's Fig. 5 (drawn for 224 px inputs).

    translation: -60..60 px in steps of 5 at 224 px, rescaled to `image_size` and rounded to whole
    pixels (so rows move exactly); scale: 1.0..1.8 in steps of 0.05 (the paper zooms in only);
    rotation: 0..360 degrees in steps of 10 (360 closes the curve at the identity).
    """
    check_int(image_size, "default_amounts: image_size", unit="pixels")
    shifts = sorted({float(round(step * image_size / 224)) for step in range(-60, 61, 5)})
    return {
        "translation": shifts,
        "scale": [round(1.0 + 0.05 * step, 2) for step in range(17)],
        "rotation": [float(angle) for angle in range(0, 361, 10)],
    }


def _check_amount(kind: str, amount: SupportsFloat) -> float:
    if kind not in TRANSFORMATIONS:
        raise InputError(f"Invariance: unknown transformation {kind!r}; expected one of {TRANSFORMATIONS}")
    try:
        if isinstance(amount, (bool, str, bytes)):
            raise TypeError
        amount = float(amount)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several values
        raise InputError(f"Invariance: {kind} amount {amount!r} is not a number; expected a finite float") from None
    if not math.isfinite(amount):
        raise InputError(f"Invariance: {kind} amount {amount} is not finite; expected finite numbers")
    if kind == "scale" and amount <= 0:
        raise InputError(f"Invariance: scale amount {amount} must be > 0 (a zoom factor; 1.0 is the identity)")
    return amount


def transform_images(images: torch.Tensor, kind: str, amount: float, fill: float = 0.0) -> torch.Tensor:
    """`images` (..., C, H, W) transformed by `kind` ("translation", "scale" or "rotation") by `amount`.

    See the module docstring for the conventions. The input is not modified.
    """
    amount = _check_amount(kind, amount)
    if amount == IDENTITY[kind]:
        return images.clone()
    translate = [0.0, amount] if kind == "translation" else [0.0, 0.0]
    return TF.affine(
        images,
        angle=amount if kind == "rotation" else 0.0,
        translate=translate,
        scale=amount if kind == "scale" else 1.0,
        shear=[0.0, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=float(fill),
    )


@dataclass
class InvarianceResult:
    """Measures of one transformation for B images at T amounts; column t is `amounts[t]`."""

    kind: str
    amounts: torch.Tensor  # (T,) float64
    layers: tuple[LayerKey, ...]
    targets: torch.Tensor  # (B,) int64: the correct classes
    distances: dict[LayerKey, torch.Tensor]  # {layer: (B, T)}: ||f(T x) - f(x)|| (divided by ||f(x)|| if relative)
    true_class_prob: torch.Tensor  # (B, T): probability of targets[b]
    top_class: torch.Tensor  # (B, T) int64: most probable class
    top_class_prob: torch.Tensor  # (B, T): its probability
    reference_norm: dict[LayerKey, torch.Tensor]  # {layer: (B,)}: ||f(x)|| of the untransformed images
    relative: bool = False  # distances divided by ||f(x)|| (NaN where it is 0), or the paper's plain Euclidean

    def as_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Flat {name: array} for `np.savez`; `prefix` (e.g. "scale_") keeps several results apart in one file."""
        arrays = {
            "kind": np.array(self.kind),
            "amounts": self.amounts.cpu().numpy(),
            "layers": np.array(self.layers)
            if any(isinstance(layer, str) for layer in self.layers)
            else np.array(self.layers, dtype=np.int64),
            "relative": np.array(self.relative),
            "targets": self.targets.cpu().numpy(),
            "true_class_prob": self.true_class_prob.cpu().numpy(),
            "top_class": self.top_class.cpu().numpy(),
            "top_class_prob": self.top_class_prob.cpu().numpy(),
        }
        for layer in self.layers:
            arrays[f"distance_layer{layer}"] = self.distances[layer].cpu().numpy()
            arrays[f"reference_norm_layer{layer}"] = self.reference_norm[layer].cpu().numpy()
        return {prefix + name: value for name, value in arrays.items()}

    def to_frame(self) -> pd.DataFrame:
        """Long-format pandas DataFrame: one row per (amount, image)."""
        import pandas as pd

        batch, count = self.true_class_prob.shape
        columns = {
            "kind": [self.kind] * (batch * count),
            "amount": self.amounts.cpu().numpy().repeat(batch),
            "image": np.tile(np.arange(batch), count),
            "target": np.tile(self.targets.cpu().numpy(), count),
        }
        # (B, T) -> amount-major rows, matching "amount" and "image" above
        for layer in self.layers:
            columns[f"distance_layer{layer}"] = self.distances[layer].cpu().numpy().T.reshape(-1)
        for name in ("true_class_prob", "top_class", "top_class_prob"):
            columns[name] = getattr(self, name).cpu().numpy().T.reshape(-1)
        return pd.DataFrame(columns)


class Invariance:
    """Invariance of a `PaperConvNet`-like classifier's features and outputs (see the module docstring).

    Args:
        model: a network with `features` and `classifier` nn.Sequential (as `LayerFeatures` needs).
        layers: paper layer numbers to measure (1 and 7 in the paper).
        batch_size: transformed copies per forward pass (the memory budget).
        fill: value of the pixels a transformation uncovers (0 = the mean pixel of normalised inputs).
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[LayerKey] = (1, 7),
        batch_size: int = 64,
        fill: float = 0.0,
        channels_last: bool = True,
        relative: bool = False,
    ) -> None:
        check_int(batch_size, "Invariance: batch_size")
        fill = float(fill)
        if not math.isfinite(fill):
            raise InputError(f"Invariance: fill must be a finite number, got {fill}")
        self.extract = LayerFeatures(model, layers, channels_last=channels_last)  # checks the layers
        self.layers = tuple(self.extract.layers)
        self.batch_size, self.fill, self.relative = batch_size, fill, bool(relative)

    # ------------------------------------------------------------------ checks
    def _check(
        self, images: object, targets: torch.Tensor | Sequence[int], amounts: object
    ) -> tuple[torch.Tensor, dict[str, list[float]]]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            shape = (
                f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
            )
            raise InputError(f"Invariance: images must be a 4-D (B, C, H, W) floating-point tensor, got {shape}")
        batch = images.shape[0]
        if batch == 0:
            raise InputError("Invariance: images is an empty batch; expected at least one image")
        targets = torch.as_tensor(targets, device=images.device)
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dim() > 1:
            raise InputError(f"Invariance: targets must be a 1-D sequence of class indices, got {targets!r}")
        targets = targets.reshape(-1).long()
        if targets.numel() != batch:
            raise InputError(
                f"Invariance: got {targets.numel()} targets for {batch} images; expected one class per image"
            )
        classes = self.extract.num_classes(images)
        bad = targets[(targets < 0) | (targets >= classes)]
        if bad.numel():
            raise InputError(
                f"Invariance: target class(es) {bad.tolist()} out of range; expected classes in 0..{classes - 1}"
            )
        if not isinstance(amounts, Mapping) or not amounts:
            raise InputError(
                f"Invariance: amounts must be a non-empty mapping {{transformation: amounts}} with keys from "
                f"{TRANSFORMATIONS}, got {amounts!r}"
            )
        checked: dict[str, list[float]] = {}
        for kind, values in amounts.items():
            if kind not in TRANSFORMATIONS:
                raise InputError(f"Invariance: unknown transformation {kind!r}; expected one of {TRANSFORMATIONS}")
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray, torch.Tensor)):
                raise InputError(f"Invariance: {kind} amounts must be a sequence of numbers, got {values!r}")
            if len(values) == 0:
                raise InputError(f"Invariance: no amounts for {kind!r}; expected a non-empty sequence of numbers")
            checked[kind] = [_check_amount(kind, value) for value in values]
        return targets, checked

    # ------------------------------------------------------------------ public
    def compute(
        self, images: torch.Tensor, targets: torch.Tensor | Sequence[int], amounts: Mapping[str, Sequence[float]]
    ) -> dict[str, InvarianceResult]:
        """{kind: InvarianceResult} for normalised `images` (B, C, H, W) of correct classes `targets` (B,),
        each transformation `kind` applied by each of `amounts[kind]`."""
        targets, amounts = self._check(images, targets, amounts)
        reference = self.extract(images)
        norms = {layer: torch.linalg.vector_norm(reference.features[layer], dim=1) for layer in self.layers}
        for layer, norm in norms.items():
            if self.relative and (norm == 0).any():
                zero = torch.nonzero(norm == 0)[:, 0].tolist()
                warnings.warn(
                    f"Invariance: the layer {layer} features of image(s) {zero} are all zero; "
                    f"their layer {layer} distances are NaN",
                    stacklevel=2,
                )
        return {
            kind: self._measure(images, targets, kind, values, reference, norms) for kind, values in amounts.items()
        }

    __call__ = compute

    def _measure(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        kind: str,
        values: Sequence[float],
        reference: LayerOutputs,
        norms: dict[LayerKey, torch.Tensor],
    ) -> InvarianceResult:
        batch, count = images.shape[0], len(values)
        # Identity amounts are not run again: their copies are the originals, so the reference pass gives
        # them exactly (distance 0, the original probabilities) instead of up to float32 noise of another batch.
        probs = reference.logits.float().softmax(dim=1)
        top_prob, top_class = (column.repeat(count, 1) for column in probs.max(dim=1))  # (T, B)
        true_prob = probs.gather(1, targets[:, None])[:, 0].repeat(count, 1)
        distances = {
            layer: (
                torch.where(norms[layer] > 0, 0.0, torch.nan) if self.relative else torch.zeros_like(norms[layer])
            ).repeat(count, 1)
            for layer in self.layers
        }

        moving = [t for t, value in enumerate(values) if value != IDENTITY[kind]]
        total = batch * len(moving)  # copies: copy i is image i % B at amount values[moving[i // B]]
        for start in range(0, total, self.batch_size):
            end = min(start + self.batch_size, total)
            parts = []
            for j in range(start // batch, (end - 1) // batch + 1):  # the amounts this batch touches
                first, last = max(start - j * batch, 0), min(end - j * batch, batch)
                parts.append(transform_images(images[first:last], kind, values[moving[j]], self.fill))
            outputs = self.extract(torch.cat(parts))
            copies = torch.arange(start, end, device=images.device)
            step, image = torch.tensor(moving, device=images.device)[copies // batch], copies % batch
            for layer in self.layers:
                change = torch.linalg.vector_norm(outputs.features[layer] - reference.features[layer][image], dim=1)
                if self.relative:
                    norm = norms[layer][image]
                    change = torch.where(norm > 0, change / norm, torch.nan)
                distances[layer][step, image] = change
            copy_probs = outputs.logits.float().softmax(dim=1)
            true_prob[step, image] = copy_probs.gather(1, targets[image][:, None])[:, 0]
            top_prob[step, image], top_class[step, image] = copy_probs.max(dim=1)

        return InvarianceResult(
            kind=kind,
            amounts=torch.tensor(values, dtype=torch.float64),
            layers=self.layers,
            targets=targets,
            distances={layer: distances[layer].T.contiguous() for layer in self.layers},  # (B, T)
            true_class_prob=true_prob.T.contiguous(),
            top_class=top_class.T.contiguous(),
            top_class_prob=top_prob.T.contiguous(),
            reference_norm=norms,
            relative=self.relative,
        )

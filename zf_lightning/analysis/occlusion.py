"""Occlusion sensitivity: Zeiler & Fergus, arXiv 1311.2901v3, section 4.2 and Fig. 7.

A grey square slides over each image; every occluded copy goes through the network, and for every
position of the square we record

(b) the total activation of one layer-5 feature map: the map whose *largest single activation* on the
    unoccluded image is the largest of the layer ("the strongest feature map"; reduction: spatial max of
    the rectified map, then argmax over maps, ties to the lowest map index). Its total activation is the
    spatial *sum* of that rectified map on the occluded copy;
(c) the deconvnet projection of that map's strongest activation on the unoccluded image
    (`Deconvnet(model).project(image[None], layer, [map], mode="max")`), once per image;
(d) the probability (softmax of the logits) of the correct class;
(e) the most probable class (ties to the lowest class index, as `argmax`).

"Grey" is the mean pixel, which is zero after the project's mean subtraction: the inputs are expected to
be mean-subtracted already, so the occluder value defaults to 0 (`occluder_value` changes it).

Positions
---------
The square's top-left corners are 0, stride, 2 * stride, ... along each axis, as Captum's `Occlusion`
places its sliding windows: ceil((H - window) / stride) + 1 positions, so where the stride does not
divide H - window the last square starts at (n - 1) * stride and is cut off by the image border (it
still starts inside the image). `include_partial=False` keeps only squares that fit entirely:
(H - window) // stride + 1 positions. Where the stride divides H - window both counts are the same.

Efficiency
----------
Occluded copies of all images are built with one broadcasted `torch.where` per batch (no loop over
positions) and go through the network in batches of `batch_size` copies; each batch goes forward once,
the chosen layer's output kept by a forward hook (`models.layers.forward_with_layers`). The model runs
in eval mode (dropout off) under `torch.no_grad`; each module's train/eval flag is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from zf_lightning.deconv.engine import Deconvnet
from zf_lightning.models.layers import forward_with_layers, numbered_layers, resolve_layer
from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.modes import evaluating
from zf_lightning.utils.validation import as_int, check_int, int_pair


@dataclass
class OcclusionResult:
    """Maps over occluder positions for B images; position (i, j) is the square at (rows[i], cols[j])."""

    rows: torch.Tensor  # (nH,) int64: top row of the occluder at each vertical position
    cols: torch.Tensor  # (nW,) int64: left column of the occluder at each horizontal position
    window: tuple[int, int]
    stride: tuple[int, int]
    layer: int | str  # a paper layer number or a module name
    targets: torch.Tensor  # (B,) int64: the correct classes
    chosen_map: torch.Tensor  # (B,) int64: the layer's strongest map on the unoccluded image
    layer_activation: torch.Tensor  # (B, nH, nW): total (summed) activation of chosen_map, occluded
    projection: torch.Tensor | None  # (B, C, H, W): deconv projection of chosen_map's strongest activation
    true_class_prob: torch.Tensor  # (B, nH, nW): probability of targets[b], occluded
    top_class: torch.Tensor  # (B, nH, nW) int64: most probable class, occluded
    top_class_prob: torch.Tensor  # (B, nH, nW): its probability
    probabilities: torch.Tensor  # (B, num_classes): class probabilities of the unoccluded images
    unoccluded_activation: torch.Tensor  # (B,): total activation of chosen_map on the unoccluded image
    map_max: torch.Tensor  # (B, maps): per-map max activation of the unoccluded image (chooses the map)


def occluder_positions(size: int, window: int, stride: int, include_partial: bool = True) -> torch.Tensor:
    """Top-left coordinates of the occluder along an axis of `size` pixels (see the module docstring)."""
    count = (math.ceil((size - window) / stride) if include_partial else (size - window) // stride) + 1
    return torch.arange(count, dtype=torch.long) * stride


class OcclusionSensitivity:
    """Occlusion sensitivity maps of any classifier network (see the module docstring).

    Args:
        model: a network whose output is (B, classes) scores.
        layer: the layer whose strongest map is tracked: a 1-based conv layer number (5 in the paper; numbered
            as in `Deconvnet`) or a module name ("layer4"), whose output is the map.
        window: side of the occluding square in pixels (int, or (height, width)).
        stride: step between occluder positions in pixels (int, or (rows, cols)).
        occluder_value: the value pasted into the square (0 = the mean pixel of mean-subtracted inputs).
        batch_size: occluded copies per forward pass (the memory budget).
        include_partial: keep a last square cut by the border where the stride does not divide evenly
            (as Captum does; True) or only squares that fit (False).
        project: compute the deconv projection (c); False leaves `projection` as None.
        channels_last: run the convolutions in channels-last memory format (faster on CPU: measured
            1.35x on full ZFNet, bench/bench_occlusion.py).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: int | str = 5,
        window: int | tuple[int, int] = 32,
        stride: int | tuple[int, int] = 8,
        occluder_value: float = 0.0,
        batch_size: int = 64,
        include_partial: bool = True,
        project: bool = True,
        channels_last: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"OcclusionSensitivity needs an nn.Module classifier, got {type(model).__name__}")
        self.model = model
        self.window = int_pair(window, "OcclusionSensitivity: window")
        self.stride = int_pair(stride, "OcclusionSensitivity: stride")
        if min(self.window) < 1:
            raise InputError(f"OcclusionSensitivity: window must be >= 1 pixel, got {window!r}")
        if min(self.stride) < 1:
            raise InputError(f"OcclusionSensitivity: stride must be >= 1 pixel, got {stride!r}")
        self.batch_size = check_int(batch_size, "OcclusionSensitivity: batch_size")
        self.occluder_value = float(occluder_value)
        self.include_partial = bool(include_partial)
        self.project = bool(project)
        self.channels_last = bool(channels_last)
        number = as_int(layer)
        if isinstance(layer, str):
            named = resolve_layer(model, layer)  # an InputError naming close module names
        else:
            convs = [entry for entry in numbered_layers(model) if entry.kind == "conv"]
            if number is None or not 1 <= number <= len(convs):
                raise InputError(
                    f"OcclusionSensitivity: layer must be an int in 1..{len(convs)} (the model has "
                    f"{len(convs)} conv layers) or a module name, got {layer!r}"
                )
            named = convs[number - 1]
        self.layer: int | str = layer if isinstance(layer, str) else cast(int, number)
        self.map_module = named.output  # the rectified map of a conv layer: the one the deconvnet projects
        classifier = getattr(model, "classifier", None)
        last = (
            [m for m in classifier.modules() if isinstance(m, nn.Linear)] if isinstance(classifier, nn.Module) else []
        )
        self.num_classes = last[-1].out_features if last else None
        self._deconvnet = Deconvnet(model) if self.project else None  # fails early on modules it cannot invert

    # ------------------------------------------------------------------ checks
    def _check(
        self, images: object, targets: torch.Tensor | Sequence[int]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"OcclusionSensitivity: images must be a 4-D (B, C, H, W) tensor, got {shape}")
        batch, _, height, width = images.shape
        if self.window[0] > height or self.window[1] > width:
            raise InputError(
                f"OcclusionSensitivity: window {self.window[0]}x{self.window[1]} is larger than the "
                f"{height}x{width} images; expected a window of at most {height}x{width}"
            )
        targets = torch.as_tensor(targets, device=images.device)
        if targets.dtype.is_floating_point or targets.dtype == torch.bool or targets.dim() > 1:
            raise InputError(f"OcclusionSensitivity: targets must be a 1-D sequence of class indices, got {targets!r}")
        targets = targets.reshape(-1).long()
        if targets.numel() != batch:
            raise InputError(
                f"OcclusionSensitivity: got {targets.numel()} targets for {batch} images; expected one class per image"
            )
        if self.num_classes is not None:
            bad = targets[(targets < 0) | (targets >= self.num_classes)]
            if bad.numel():
                raise InputError(
                    f"OcclusionSensitivity: target class(es) {bad.tolist()} out of range; expected classes "
                    f"in 0..{self.num_classes - 1}"
                )
        rows = occluder_positions(height, self.window[0], self.stride[0], self.include_partial)
        cols = occluder_positions(width, self.window[1], self.stride[1], self.include_partial)
        return targets, (rows.to(images.device), cols.to(images.device))

    # ----------------------------------------------------------------- forward
    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(rectified maps of the layer (N, maps, h, w), logits (N, classes)) from one pass."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        kept, logits = forward_with_layers(self.model, x, {"map": self.map_module})
        maps = kept["map"]
        if maps.dim() == 2:  # a dense layer: F maps of 1x1, as the deconvnet counts them
            maps = maps[:, :, None, None]
        if maps.dim() != 4 or logits.dim() != 2:
            raise InputError(
                f"OcclusionSensitivity: layer {self.layer!r} gives {tuple(maps.shape)} and the network "
                f"{tuple(logits.shape)}; expected (B, maps, h, w) maps and (B, classes) scores"
            )
        return maps, logits

    def _occluded(
        self,
        images: torch.Tensor,
        pairs: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        positions_per_image: int,
    ) -> torch.Tensor:
        """Occluded copies for flat (image, position) indices `pairs`, built with one broadcasted op."""
        height, width = images.shape[2:]
        image = pairs // positions_per_image
        position = pairs % positions_per_image
        top = rows[position // len(cols)]
        left = cols[position % len(cols)]
        ys = torch.arange(height, device=images.device)
        xs = torch.arange(width, device=images.device)
        in_rows = (ys >= top[:, None]) & (ys < top[:, None] + self.window[0])  # (N, H)
        in_cols = (xs >= left[:, None]) & (xs < left[:, None] + self.window[1])  # (N, W)
        mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (N, 1, H, W)
        value = torch.tensor(self.occluder_value, dtype=images.dtype, device=images.device)
        return torch.where(mask, value, images.index_select(0, image))

    # ------------------------------------------------------------------ public
    def compute(self, images: torch.Tensor, targets: torch.Tensor | Sequence[int]) -> OcclusionResult:
        """Occlusion maps of `images` (B, C, H, W), mean-subtracted, for correct classes `targets` (B,)."""
        targets, (rows, cols) = self._check(images, targets)
        batch = images.shape[0]
        n_rows, n_cols = len(rows), len(cols)
        per_image = n_rows * n_cols
        with evaluating(self.model):
            maps, logits = self._forward(images)
            if self.num_classes is None:  # classifier without a Linear: check the targets now
                bad = targets[(targets < 0) | (targets >= logits.shape[1])]
                if bad.numel():
                    raise InputError(
                        f"OcclusionSensitivity: target class(es) {bad.tolist()} out of range; expected "
                        f"classes in 0..{logits.shape[1] - 1}"
                    )
            map_max = maps.flatten(2).amax(dim=2)  # (B, maps)
            chosen = map_max.argmax(dim=1)  # first maximum: lowest map index on ties
            batch_index = torch.arange(batch, device=images.device)
            unoccluded_activation = maps.flatten(2).sum(dim=2)[batch_index, chosen]
            probabilities = logits.float().softmax(dim=1)

            total = batch * per_image
            activation = images.new_empty(total)
            true_prob = torch.empty(total, device=images.device)
            top_prob = torch.empty(total, device=images.device)
            top_class = torch.empty(total, dtype=torch.long, device=images.device)
            for start in range(0, total, self.batch_size):
                pairs = torch.arange(start, min(start + self.batch_size, total), device=images.device)
                image = pairs // per_image
                maps, logits = self._forward(self._occluded(images, pairs, rows, cols, per_image))
                # Only the chosen map's sum is needed: gather it before reducing.
                picked = maps[torch.arange(len(pairs), device=images.device), chosen[image]]
                activation[pairs] = picked.flatten(1).sum(dim=1)
                probs = logits.float().softmax(dim=1)
                true_prob[pairs] = probs.gather(1, targets[image][:, None])[:, 0]
                top_prob[pairs], top_class[pairs] = probs.max(dim=1)

        projection = None
        if self.project:
            assert self._deconvnet is not None  # made in __init__ when project is set
            projection = self._deconvnet.project_strongest(images, self.layer, chosen).paste(
                (images.shape[-2], images.shape[-1])
            )
        shape = (batch, n_rows, n_cols)
        return OcclusionResult(
            rows=rows,
            cols=cols,
            window=self.window,
            stride=self.stride,
            layer=self.layer,
            targets=targets,
            chosen_map=chosen,
            layer_activation=activation.reshape(shape),
            projection=projection,
            true_class_prob=true_prob.reshape(shape),
            top_class=top_class.reshape(shape),
            top_class_prob=top_prob.reshape(shape),
            probabilities=probabilities,
            unoccluded_activation=unoccluded_activation,
            map_max=map_max,
        )

    __call__ = compute

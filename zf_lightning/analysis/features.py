"""Feature vectors of a network's layers, as the invariance and correspondence analyses compare them.

Layers are named as everywhere in the project (`models.layers.resolve_layer`). On a network with the paper's
layout (`PaperLayers`): conv layers 1..C, whose feature vector is the rectified conv output (the map *before*
pooling and normalisation, the map the deconvnet projects), flattened; then the hidden fully connected layers C+1,
C+2 (fc6 and fc7 when C = 5), their rectified output (dropout is off: the network runs in eval mode). On any
other network conv layer N is its N-th Conv2d, and any module may be named ("layer4.1"): its output, flattened.
Every requested layer comes from one forward pass of the whole network, which also gives the logits.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zf_lightning.models.layers import (
    LayerKey,
    PaperLayers,
    forward_with_layers,
    layer_key,
    numbered_layers,
    resolve_layer,
)
from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.modes import evaluating


@dataclass
class LayerOutputs:
    features: dict[LayerKey, torch.Tensor]  # {layer: (B, D_layer)}
    logits: torch.Tensor  # (B, num_classes)


class LayerFeatures:
    """`LayerFeatures(model, layers=(1, 7))(images)` -> `LayerOutputs` with each layer's flattened features.

    Args:
        model: a classifier network (its output: (B, classes) scores).
        layers: paper layer numbers (1..C for the conv layers, C+1 and C+2 for fc6 and fc7 where the network has
            them), "fc6"/"fc7", or module names (`resolve_layer`).
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int | str] = (1, 7), channels_last: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"LayerFeatures needs an nn.Module, got {type(model).__name__}")
        self.model, self.channels_last = model, channels_last
        keys: list[LayerKey] = [layer_key(layer) for layer in layers]
        numbered = [layer.number for layer in numbered_layers(model)]
        missing = [key for key in keys if isinstance(key, int) and key not in numbered]
        if missing or not keys:
            try:
                described = PaperLayers(model).describe()
            except InputTypeError:
                described = (
                    f"conv layers 1..{len(numbered)} (its Conv2d modules in order), or module names"
                    if numbered
                    else f"{type(model).__name__} has no Conv2d module: name a module instead"
                )
            raise InputError(
                f"LayerFeatures: layer(s) {missing or keys} not in this network; expected some of {numbered} "
                f"({described})"
            )
        self.modules: dict[Hashable, str] = {}
        for key in keys:
            try:
                self.modules[key] = resolve_layer(model, key).output
            except InputError as error:
                raise InputError(f"LayerFeatures: {error}") from None
        ints = all(isinstance(key, int) for key in keys)
        self.layers: list[LayerKey] = sorted(set(keys)) if ints else list(dict.fromkeys(keys))
        classifier = getattr(model, "classifier", None)
        linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)] if classifier is not None else []
        self._num_classes: int | None = linears[-1].out_features if linears else None

    def num_classes(self, images: torch.Tensor) -> int:
        """The network's number of classes: its class layer's width, or that of its output on `images[:1]`."""
        if self._num_classes is None:
            self._num_classes = int(self(images[:1]).logits.shape[1])
        return self._num_classes

    def __call__(self, images: torch.Tensor) -> LayerOutputs:
        """Flattened features {layer: (B, D)} and logits (B, classes) of `images` (B, C, H, W), from one pass."""
        with evaluating(self.model):
            x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
            kept, logits = forward_with_layers(self.model, x, {layer: self.modules[layer] for layer in self.layers})
        if logits.dim() != 2:
            raise InputError(
                f"LayerFeatures: {type(self.model).__name__} returned {tuple(logits.shape)}; expected (batch, classes)"
            )
        return LayerOutputs(features={layer: kept[layer].flatten(1) for layer in self.layers}, logits=logits)

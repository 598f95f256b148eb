"""Feature vectors of a network's layers, as the invariance and correspondence analyses compare them.

Layer numbering follows the paper (`models.layers.PaperLayers`): conv layers 1..C, whose feature vector is the
rectified conv output (the map *before* pooling and normalisation, the map the deconvnet projects), flattened;
then the hidden fully connected layers C+1, C+2 (fc6 and fc7 when C = 5); their feature vector is the rectified
output (dropout is off: the network runs in eval mode). Every requested layer comes from one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zf_lightning.models.layers import PaperLayers
from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.modes import evaluating


@dataclass
class LayerOutputs:
    features: dict[int, torch.Tensor]  # {layer: (B, D_layer)}
    logits: torch.Tensor  # (B, num_classes)


class LayerFeatures:
    """`LayerFeatures(model, layers=(1, 7))(images)` -> `LayerOutputs` with each layer's flattened features.

    Args:
        model: a network with `features` and `classifier` nn.Sequential,
            `model(x) == classifier(features(x).flatten(1))`.
        layers: paper layer numbers (`PaperLayers`): 1..C for the conv layers, C+1 and C+2 for fc6 and fc7.
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int] = (1, 7), channels_last: bool = True) -> None:
        features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
        if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Sequential):
            raise InputTypeError(
                "LayerFeatures needs a model with `features` and `classifier` nn.Sequential (a PaperConvNet), "
                f"got {type(model).__name__}"
            )
        self.model, self.channels_last = model, channels_last
        numbering = PaperLayers(model)
        # The rectified maps (conv) and the hidden dense layers' outputs after their ReLU.
        self.available = {layer.number: (layer.part, layer.rectified) for layer in [*numbering.conv, *numbering.dense]}
        layers = [int(layer) for layer in layers]
        missing = [layer for layer in layers if layer not in self.available]
        if missing or not layers:
            raise InputError(
                f"LayerFeatures: layer(s) {missing or layers} not in this network; expected some of "
                f"{sorted(self.available)} ({numbering.describe()})"
            )
        self.layers = sorted(set(layers))
        self.num_classes = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1].out_features

    def __call__(self, images: torch.Tensor) -> LayerOutputs:
        """Flattened features {layer: (B, D)} and logits (B, classes) of `images` (B, C, H, W), from one pass."""
        wanted = {self.available[layer]: layer for layer in self.layers}
        out: dict[int, torch.Tensor] = {}
        with evaluating(self.model):
            x = images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
            for part in ("features", "classifier"):
                if part == "classifier":
                    x = x.flatten(1)
                for index, module in enumerate(getattr(self.model, part)):
                    x = module(x)
                    if (part, index) in wanted:
                        # clone: a later in-place op (LRN is not, but dropout/ReLU may be) must not change it
                        out[wanted[(part, index)]] = x.flatten(1).clone()
        return LayerOutputs(features=out, logits=x)

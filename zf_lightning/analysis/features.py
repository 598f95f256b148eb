"""Feature vectors of a network's layers, as the invariance and correspondence analyses compare them.

Layer numbering follows the paper. Conv layers 1..n are counted as `Deconvnet` counts them (the
network's conv layers in order); their feature vector is the rectified conv output (the map *before*
pooling and normalisation, the map the deconvnet projects), flattened. Dense layers 6 and 7 are the
hidden fully connected layers (fc6, fc7) in order; their feature vector is the rectified output (dropout
is off: the network runs in eval mode). Every requested layer comes from one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from zf_lightning.utils.modes import evaluating

DENSE_FEATURE_LAYERS = (6, 7)


@dataclass
class LayerOutputs:
    features: dict[int, torch.Tensor]  # {layer: (B, D_layer)}
    logits: torch.Tensor  # (B, num_classes)


class LayerFeatures:
    """`LayerFeatures(model, layers=(1, 7))(images)` -> `LayerOutputs` with each layer's flattened features.

    Args:
        model: a network with `features` and `classifier` nn.Sequential, `model(x) == classifier(features(x).flatten(1))`.
        layers: paper layer numbers: 1..(number of conv layers), and 6, 7 for fc6 and fc7.
        channels_last: run the convolutions in channels-last memory format (faster on CPU).
    """

    def __init__(self, model: nn.Module, layers: Sequence[int] = (1, 7), channels_last: bool = True) -> None:
        features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
        if not isinstance(features, nn.Sequential) or not isinstance(classifier, nn.Sequential):
            raise TypeError(
                f"LayerFeatures needs a model with `features` and `classifier` nn.Sequential (a PaperConvNet), got {type(model).__name__}"
            )
        self.model, self.channels_last = model, channels_last
        conv_relus = _relu_after_each(features, nn.Conv2d)
        dense_relus = _relu_after_each(classifier, nn.Linear)
        self.available = {
            **{layer: ("features", index) for layer, index in enumerate(conv_relus, start=1)},
            **{layer: ("classifier", index) for layer, index in zip(DENSE_FEATURE_LAYERS, dense_relus)},
        }
        layers = [int(layer) for layer in layers]
        missing = [layer for layer in layers if layer not in self.available]
        if missing or not layers:
            raise ValueError(
                f"LayerFeatures: layer(s) {missing or layers} not in this network; expected some of {sorted(self.available)} "
                f"(conv layers 1..{len(conv_relus)}, hidden dense layers {list(DENSE_FEATURE_LAYERS[: len(dense_relus)])})"
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



def _relu_after_each(sequential: nn.Sequential, kind: type) -> list[int]:
    """Index of the ReLU that follows each `kind` module (a Conv2d or a Linear without ReLU is skipped)."""
    indices, pending = [], False
    for index, module in enumerate(sequential):
        if isinstance(module, kind):
            pending = True
        elif isinstance(module, nn.ReLU) and pending:
            indices.append(index)
            pending = False
    return indices

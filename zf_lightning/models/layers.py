"""The paper's layer numbering of a network: conv layers 1..C in `features`, then its hidden dense layers C+1, C+2
in `classifier` (fc6 and fc7 of ZFNet and AlexNet, whose C is 5; 14 and 15 on VGG-16, whose C is 13).

Every engine and analysis that names a layer by its number (the deconvnet, occlusion, layer features, the
feature-analysis blocks, feature evolution) takes its modules from here, so that "layer 5" is the same place
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from zf_lightning.utils.errors import InputError, InputTypeError


@dataclass(frozen=True)
class PaperLayer:
    """Where layer `number` sits in its `part` (`features` or `classifier`) of the network.

    `weights` indexes its Conv2d or Linear; `rectified` the module whose output is its rectified map (the ReLU right
    after it, or the layer itself when none follows); `block_end` the last module before the next layer's weights
    (after its pooling and normalisation), or the part's last module.
    """

    number: int
    kind: Literal["conv", "dense"]
    part: Literal["features", "classifier"]
    weights: int
    rectified: int
    block_end: int


def _layers_of(sequential: nn.Sequential, kind: type[nn.Module], first: int, name: str) -> list[PaperLayer]:
    found = [index for index, module in enumerate(sequential) if isinstance(module, kind)]
    layers = []
    for position, index in enumerate(found):
        follows_relu = index + 1 < len(sequential) and isinstance(sequential[index + 1], nn.ReLU)
        end = found[position + 1] - 1 if position + 1 < len(found) else len(sequential) - 1
        layers.append(
            PaperLayer(
                first + position,
                "conv" if kind is nn.Conv2d else "dense",
                name,  # type: ignore[arg-type]
                index,
                index + 1 if follows_relu else index,
                end,
            )
        )
    return layers


class PaperLayers:
    """`PaperLayers(net)[5]` -> the `PaperLayer` of conv layer 5; `.conv` and `.dense` list them in order.

    Args:
        net: a network with a `features` nn.Sequential and, optionally, a `classifier` nn.Sequential (a
            `PaperConvNet`, torchvision's AlexNet or VGG), or such an nn.Sequential of conv layers itself.
            The classifier's last Linear is the class layer, not a hidden layer.
    """

    def __init__(self, net: nn.Module) -> None:
        features = net if isinstance(net, nn.Sequential) else getattr(net, "features", None)
        if not isinstance(features, nn.Sequential):
            raise InputTypeError(
                "the paper's layer numbering needs a network whose `features` is an nn.Sequential (or an "
                f"nn.Sequential itself), got {type(net).__name__} with features of type {type(features).__name__}"
            )
        classifier = None if isinstance(net, nn.Sequential) else getattr(net, "classifier", None)
        self.features = features
        self.classifier = classifier if isinstance(classifier, nn.Sequential) else None
        self.conv = _layers_of(features, nn.Conv2d, 1, "features")
        hidden = (
            _layers_of(self.classifier, nn.Linear, len(self.conv) + 1, "classifier")
            if self.classifier is not None
            else []
        )
        self.dense = [layer for layer in hidden[:-1] if layer.rectified != layer.weights]  # hidden: with a ReLU
        self._by_number = {layer.number: layer for layer in [*self.conv, *self.dense]}

    @property
    def numbers(self) -> list[int]:
        return sorted(self._by_number)

    def __contains__(self, number: object) -> bool:
        return number in self._by_number

    def __getitem__(self, number: int) -> PaperLayer:
        if isinstance(number, bool) or not isinstance(number, int) or number not in self._by_number:
            raise InputError(f"layer {number!r} is not in this network; {self.describe()}")
        return self._by_number[number]

    def describe(self) -> str:
        """ "conv layers 1..5, hidden dense layers [6, 7]": what a layer number may be, for error messages."""
        dense = (
            f", hidden dense layers {[layer.number for layer in self.dense]}"
            if self.dense
            else ", no hidden dense layer"
        )
        return f"conv layers 1..{len(self.conv)}{dense}"

    def module(self, layer: PaperLayer, which: Literal["weights", "rectified", "block_end"] = "weights") -> nn.Module:
        part = self.features if layer.part == "features" else self.classifier
        assert part is not None
        return part[getattr(layer, which)]

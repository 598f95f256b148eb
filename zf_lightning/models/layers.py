"""The paper's layer numbering of a network: conv layers 1..C in `features`, then its hidden dense layers C+1, C+2
in `classifier` (fc6 and fc7 of ZFNet and AlexNet, whose C is 5; 14 and 15 on VGG-16, whose C is 13).

Every engine and analysis that names a layer by its number (the deconvnet, occlusion, layer features, the
feature-analysis blocks, feature evolution) takes its modules from here, so that "layer 5" is the same place
everywhere.

Networks of any other shape (ResNets, user modules) are numbered by `numbered_layers` (conv layer N is the N-th
nn.Conv2d) and their layers may also be named by module (`resolve_layer(net, "layer4.1")`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import nn

from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.validation import as_int

# A layer as a user names it: the paper's number (conv 1..C, then its hidden dense layers) or a module name.
LayerKey = Union[int, str]


@dataclass(frozen=True)
class PaperLayer:
    """Where layer `number` sits in its `part` (`features` or `classifier`) of the network.

    `weights` indexes its Conv2d or Linear; `rectified` the module whose output is its rectified map (the ReLU right
    after it, or after its BatchNorm, or the layer itself when none follows); `block_end` the last module before the
    next layer's weights (after its pooling and normalisation), or the part's last module.
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
        after = index + 1
        if kind is nn.Conv2d and after < len(sequential) and isinstance(sequential[after], nn.BatchNorm2d):
            after += 1  # conv -> BatchNorm -> ReLU (VGG-bn): the map is still the ReLU's output
        follows_relu = after < len(sequential) and isinstance(sequential[after], nn.ReLU)
        end = found[position + 1] - 1 if position + 1 < len(found) else len(sequential) - 1
        layers.append(
            PaperLayer(
                first + position,
                "conv" if kind is nn.Conv2d else "dense",
                name,  # type: ignore[arg-type]
                index,
                after if follows_relu else index,
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


# ------------------------------------------------------------ any network, by module name
DENSE_ALIASES = {"fc6": 1, "fc7": 2}  # "fc6" is layer C+1, "fc7" C+2 (the paper's names of the hidden dense layers)


@dataclass(frozen=True)
class NamedLayer:
    """A layer of any network, by module names (as in `net.named_modules()`).

    `output` names the module whose output is the layer's map (a conv's ReLU, a block, any module); `weights` the
    Conv2d or Linear of a numbered layer (None for a layer given by module name); `number` its paper number, if any.
    """

    output: str
    kind: Literal["conv", "dense", "module"]
    number: int | None = None
    weights: str | None = None


def _prefix(net: nn.Module, part: str) -> str:
    return "" if isinstance(net, nn.Sequential) and part == "features" else f"{part}."


def numbered_layers(net: nn.Module) -> list[NamedLayer]:
    """The paper's numbered layers of any network, conv layers 1..C first.

    A network with an nn.Sequential `features` (or such an nn.Sequential itself) is numbered by `PaperLayers`.
    Elsewhere conv layer N is the N-th nn.Conv2d in `named_modules()` order; its map is the output of the nn.ReLU
    that directly follows it in an nn.Sequential, else the conv's own output. Only `PaperLayers` networks have
    dense layers.
    """
    try:
        paper = PaperLayers(net)
    except InputTypeError:
        paper = None
    if paper is not None:
        return [
            NamedLayer(
                f"{_prefix(net, layer.part)}{layer.rectified}",
                layer.kind,
                layer.number,
                f"{_prefix(net, layer.part)}{layer.weights}",
            )
            for layer in [*paper.conv, *paper.dense]
        ]
    modules = dict(net.named_modules())
    layers: list[NamedLayer] = []
    for name, module in modules.items():
        if not isinstance(module, nn.Conv2d):
            continue
        parent_name, _, key = name.rpartition(".")
        parent = modules[parent_name]
        output = name
        if isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            position = keys.index(key)
            if position + 1 < len(keys) and isinstance(parent._modules[keys[position + 1]], nn.ReLU):
                output = f"{parent_name}.{keys[position + 1]}" if parent_name else keys[position + 1]
        layers.append(NamedLayer(output, "conv", len(layers) + 1, name))
    return layers


def resolve_layer(net: nn.Module, layer: int | str) -> NamedLayer:
    """`layer` of `net`: a paper number (see `numbered_layers`), "fc6"/"fc7" (layers C+1, C+2 where the network has
    them), or the name of any module in `net.named_modules()`, whose output is then the layer's map.

    An unknown name is an InputError that lists close or available names.
    """
    numbered = numbered_layers(net)
    convs = [entry for entry in numbered if entry.kind == "conv"]
    if isinstance(layer, str):
        modules = dict(net.named_modules())
        if layer in modules and layer:
            return NamedLayer(layer, "module")
        if layer in DENSE_ALIASES:
            number = len(convs) + DENSE_ALIASES[layer]
            for entry in numbered:
                if entry.number == number and entry.kind == "dense":
                    return entry
            raise InputError(
                f"layer {layer!r} (layer {number}) is not in this {type(net).__name__}: it has no hidden dense layer "
                f"{number}; name a module instead"
            )
        raise InputError(
            f"layer {layer!r} is not a module of this {type(net).__name__}; {_close_names(layer, modules)}"
        )
    wanted = as_int(layer)
    for entry in numbered:
        if entry.number == wanted:
            return entry
    raise InputError(
        f"layer {layer!r} is not in this {type(net).__name__}: layers are numbered 1..{len(convs)} (conv layers)"
        f"{''.join(f', {entry.number}' for entry in numbered if entry.kind == 'dense')} or named by module"
    )


def _close_names(name: str, modules: dict[str, nn.Module], count: int = 8) -> str:
    """ "close names: ..." (difflib) or, if none is close, the first available ones, for error messages."""
    names = [key for key in modules if key]
    close = difflib.get_close_matches(name, names, n=count, cutoff=0.6)
    if close:
        return f"close names: {close}"
    tops = [key for key in names if "." not in key]
    shown = tops[:count] if tops else names[:count]
    return f"available names include {shown} ({len(names)} modules in all, as in named_modules())"


# ------------------------------------------------------------ one forward, some layers' outputs kept
def forward_with_layers(
    net: nn.Module, images: torch.Tensor, outputs: Mapping[Hashable, str]
) -> tuple[dict[Hashable, torch.Tensor], torch.Tensor]:
    """One whole forward of `net`: ({key: output of module `outputs[key]`}, the network's output).

    A module called several times in one forward (a reused nn.ReLU) gives its last call's output, as the
    deconvnet's general path does. Outputs are cloned: a later in-place op (an in-place ReLU or dropout) must not
    change them.
    """
    modules = dict(net.named_modules(remove_duplicate=False))
    kept: dict[Hashable, torch.Tensor] = {}

    def keep(key: Hashable) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor):
                raise InputError(f"module {outputs[key]!r} returns a {type(output).__name__}, not a tensor")
            kept[key] = output.clone()

        return hook

    handles = [modules[name].register_forward_hook(keep(key)) for key, name in outputs.items()]
    try:
        result = net(images)
    finally:
        for handle in handles:
            handle.remove()
    missing = [outputs[key] for key in outputs if key not in kept]
    if missing:
        raise InputError(f"the forward pass of {type(net).__name__} never ran module(s) {missing}")
    if not isinstance(result, torch.Tensor):
        raise InputTypeError(f"{type(net).__name__} returned a {type(result).__name__}; expected a tensor of scores")
    return kept, result


def layer_key(layer: object) -> LayerKey:
    """A layer as given in a config or a call: an integer (the paper's number) or a module name."""
    number = as_int(layer)
    return number if number is not None else str(layer)

"""The deconvnet of Zeiler & Fergus 2014, section 2.1: project a feature activation back to pixel space.

`Deconvnet(model).project(images, layer, maps, mode, method)` returns, for every image and every
chosen feature map of conv layer `layer`, an image-sized tensor: the "reconstruction" of the paper's
Fig. 2 (method="deconvnet"), or the guided-backprop / plain-gradient variants of it.

Semantics
---------
* Layer L is the L-th `nn.Conv2d` of `model.features` (1-based; ZFNet's conv1-conv5 are layers 1-5).
  Its feature map is the *rectified* output of that conv: the output of the `nn.ReLU` that directly
  follows it (before any pooling or normalisation). If no ReLU follows the conv, the conv's output.
* `mode="max"` keeps only the strongest activation of each chosen map (one location per image; ties go
  to the first location in row-major order); `mode="map"` keeps the whole map. All other activations of
  the layer are set to zero. The signal sent down is the activation itself (its value, not 1).
* Going down from layer L to the input, each module below it is inverted in reverse order:
    - `nn.ReLU` -> the method's rectification rule, with `x` the ReLU's input recorded in the forward pass
      and `g` the signal coming down:
        "deconvnet": relu(g)                (the paper: the forward activation is ignored)
        "guided":    relu(g) * (x > 0)      (guided backpropagation, Springenberg et al. 2015)
        "gradient":  g * (x > 0)            (the plain gradient, Simonyan et al. 2014)
    - `nn.MaxPool2d` -> unpooling with the switches (argmax locations) of the forward pass; where
      overlapping windows share a switch their contributions add (the transpose of max pooling).
    - `nn.Conv2d` -> the transposed filters of the same conv, no bias (`conv_transpose2d` with the conv's
      stride/padding/dilation/groups and an output padding that restores the conv's input size).
    - `nn.LocalResponseNorm` -> passed through unchanged.
  The result lives in input space and has the input's size.

All (image, map) pairs go down together as one batch of B * len(maps), split into chunks so that the
largest intermediate signal of a chunk holds at most `max_batch_elements` numbers. The model is left
as it was: no gradients, same weights, same train/eval mode of every module; the images are not changed.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("max", "map")
METHODS = ("deconvnet", "guided", "gradient")
SUPPORTED_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm)


@dataclass
class _Record:
    """What the downward pass needs from the forward pass at one module."""

    module: nn.Module
    input_shape: tuple[int, ...]  # (B, C, H, W) of the module's input
    saved: torch.Tensor | None = None  # ReLU: input > 0 (bool); MaxPool2d: the switches (int64)


def _features_of(model: nn.Module) -> nn.Sequential:
    features = model if isinstance(model, nn.Sequential) else getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):
        raise TypeError(
            "Deconvnet needs a model whose `features` is an nn.Sequential (or an nn.Sequential itself), "
            f"got {type(model).__name__} with features of type {type(features).__name__}"
        )
    return features


class Deconvnet:
    """Project feature activations of a conv net's `features` back to the input (see the module docstring).

    Args:
        model: a model with a `features` nn.Sequential made of Conv2d, ReLU, MaxPool2d and
            LocalResponseNorm modules (or that nn.Sequential itself).
        max_batch_elements: memory budget of the downward pass, in tensor elements: (image, map) pairs
            are sent down in chunks whose largest intermediate signal holds at most this many numbers
            (at least one pair per chunk). None sends all pairs at once.
    """

    def __init__(self, model: nn.Module, max_batch_elements: int | None = 2**25) -> None:
        self.features = _features_of(model)
        supported = ", ".join(cls.__name__ for cls in SUPPORTED_MODULES)
        for index, module in enumerate(self.features):
            if type(module) not in SUPPORTED_MODULES:
                raise TypeError(
                    f"Deconvnet: features[{index}] is a {type(module).__name__}, which the deconvnet cannot "
                    f"invert; supported modules are {supported}"
                )
            if isinstance(module, nn.Conv2d):
                if module.padding_mode != "zeros" or isinstance(module.padding, str):
                    raise TypeError(
                        f"Deconvnet: features[{index}] is a Conv2d with padding={module.padding!r}, "
                        f"padding_mode={module.padding_mode!r}; only explicit zero padding is supported"
                    )
        self.conv_indices = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        if not self.conv_indices:
            raise ValueError("Deconvnet: the features contain no Conv2d layer")
        if max_batch_elements is not None and max_batch_elements < 1:
            raise ValueError(f"Deconvnet: max_batch_elements must be >= 1 or None, got {max_batch_elements}")
        self.max_batch_elements = max_batch_elements

    @property
    def num_layers(self) -> int:
        """The number of conv layers (valid `layer` values are 1..num_layers)."""
        return len(self.conv_indices)

    def num_maps(self, layer: int) -> int:
        """The number of feature maps of conv layer `layer`."""
        self._check_layer(layer)
        return self.features[self.conv_indices[_as_int(layer) - 1]].out_channels

    def _check_layer(self, layer) -> None:
        if _as_int(layer) is None or not 1 <= _as_int(layer) <= self.num_layers:
            raise ValueError(
                f"Deconvnet: layer must be an int in 1..{self.num_layers} (the model has {self.num_layers} "
                f"conv layers), got {layer!r}"
            )

    def _top_index(self, layer: int) -> int:
        """Index in `features` of the module whose output is layer `layer`'s feature map."""
        index = self.conv_indices[layer - 1]
        if index + 1 < len(self.features) and isinstance(self.features[index + 1], nn.ReLU):
            index += 1
        return index

    # ---------------------------------------------------------------- forward
    def _forward(self, images: torch.Tensor, top: int, masks: bool = True) -> tuple[torch.Tensor, list[_Record]]:
        """Run features[0..top] functionally, recording pooling switches (and ReLU masks if `masks`)."""
        records: list[_Record] = []
        x = images
        for module in list(self.features)[: top + 1]:
            record = _Record(module, tuple(x.shape))
            if isinstance(module, nn.ReLU):
                record.saved = (x > 0) if masks else None
                x = F.relu(x)  # never in place: the recorded tensors and the input stay intact
            elif isinstance(module, nn.MaxPool2d):
                x, record.saved = F.max_pool2d(
                    x, module.kernel_size, module.stride, module.padding, module.dilation,
                    ceil_mode=module.ceil_mode, return_indices=True,
                )
            else:  # Conv2d, LocalResponseNorm: out of place, eval mode
                x = module(x)
            records.append(record)
        return x, records

    # --------------------------------------------------------------- downward
    @staticmethod
    def _down(signal: torch.Tensor, records: list[_Record], rows: torch.Tensor, method: str) -> torch.Tensor:
        """Send `signal` (one row per pair; `rows` = the image of each row) down through `records` reversed."""
        for record in reversed(records):
            module = record.module
            if isinstance(module, nn.ReLU):
                if method == "deconvnet":
                    signal = F.relu(signal)
                else:
                    mask = record.saved.index_select(0, rows)
                    if method == "guided":
                        signal = F.relu(signal)
                    signal = signal * mask
            elif isinstance(module, nn.MaxPool2d):
                n, c, oh, ow = signal.shape
                h, w = record.input_shape[2:]
                switches = record.saved.index_select(0, rows).reshape(n, c, oh * ow)
                unpooled = signal.new_zeros(n, c, h * w)
                unpooled.scatter_add_(2, switches, signal.reshape(n, c, oh * ow))
                signal = unpooled.reshape(n, c, h, w)
            elif isinstance(module, nn.Conv2d):
                signal = _conv_transpose(signal, module, record.input_shape[2:])
            # LocalResponseNorm: identity
        return signal

    # ------------------------------------------------------------------ public
    def project(
        self,
        images: torch.Tensor,
        layer: int,
        maps: int | Sequence[int],
        mode: str = "max",
        method: str = "deconvnet",
    ) -> torch.Tensor:
        """Project the chosen feature maps of conv layer `layer` down to the input.

        Args:
            images: (B, C, H, W) input batch, on the model's device and in its dtype.
            layer: 1-based index of the conv layer among the Conv2d modules of `features`.
            maps: the feature map(s) of that layer to project (0-based channel indices).
            mode: "max" (only the strongest activation of each map) or "map" (the whole map).
            method: "deconvnet", "guided" or "gradient" (see the module docstring).

        Returns:
            (B, len(maps), C, H, W): out[b, k] is the projection of map maps[k] for image b.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"Deconvnet: images must be a 4-D (B, C, H, W) tensor, got {shape}")
        self._check_layer(layer)
        layer = _as_int(layer)
        if mode not in MODES:
            raise ValueError(f"Deconvnet: unknown mode {mode!r}; allowed modes are {list(MODES)}")
        if method not in METHODS:
            raise ValueError(f"Deconvnet: unknown method {method!r}; allowed methods are {list(METHODS)}")
        map_list = [maps] if _as_int(maps) is not None else list(maps)
        num_maps = self.num_maps(layer)
        if not map_list:
            raise ValueError("Deconvnet: maps is empty; give at least one feature map index")
        bad = [m for m in map_list if _as_int(m) is None or not 0 <= _as_int(m) < num_maps]
        if bad:
            raise ValueError(
                f"Deconvnet: map index(es) {bad} out of range: layer {layer} has {num_maps} maps "
                f"(valid indices 0..{num_maps - 1})"
            )
        map_list = [_as_int(m) for m in map_list]

        modes = {module: module.training for module in self.features.modules()}
        try:
            self.features.eval()
            with torch.no_grad():
                return self._project(images, layer, map_list, mode, method)
        finally:
            for module, training in modes.items():
                module.training = training

    def _project(self, images, layer, map_list, mode, method) -> torch.Tensor:
        top = self._top_index(layer)
        activation, records = self._forward(images, top, masks=method != "deconvnet")
        batch, channels, h, w = activation.shape
        k = len(map_list)
        map_index = torch.tensor(map_list, device=images.device)
        chosen = activation.index_select(1, map_index)  # (B, K, h, w)
        if mode == "max":
            flat = chosen.reshape(batch, k, h * w)
            where = flat.argmax(dim=2, keepdim=True)  # first maximum in row-major order
            chosen = torch.zeros_like(flat).scatter_(2, where, flat.gather(2, where)).reshape(batch, k, h, w)
        chosen = chosen.reshape(batch * k, h, w)
        rows_all = torch.arange(batch, device=images.device).repeat_interleave(k)
        maps_all = map_index.repeat(batch)

        # Chunk so that the largest signal of the downward pass stays within the budget.
        per_pair = max(r.input_shape[1] * r.input_shape[2] * r.input_shape[3] for r in records)
        per_pair = max(per_pair, channels * h * w)
        total = batch * k
        chunk = total if self.max_batch_elements is None else max(1, self.max_batch_elements // per_pair)
        out = images.new_empty(total, *images.shape[1:])
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            n = stop - start
            signal = activation.new_zeros(n, channels, h, w)
            signal[torch.arange(n, device=images.device), maps_all[start:stop]] = chosen[start:stop]
            # The top layer's own ReLU is not applied again: the signal is already its rectified output.
            below = records[: self.conv_indices[layer - 1] + 1]
            out[start:stop] = self._down(signal, below, rows_all[start:stop], method)
        return out.reshape(batch, k, *images.shape[1:])


def _as_int(value) -> int | None:
    """`value` as an int if it is an integer (int, numpy integer, 0-d integer tensor) but not a bool."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dim() != 0):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _conv_transpose(signal: torch.Tensor, conv: nn.Conv2d, input_size: Iterable[int]) -> torch.Tensor:
    """The transpose of `conv` (no bias), with an output exactly `input_size` wide."""
    out_h, out_w = signal.shape[2:]
    output_padding = []
    for size, out, k, s, p, d in zip(input_size, (out_h, out_w), conv.kernel_size, conv.stride, conv.padding, conv.dilation):
        output_padding.append(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1))
    return F.conv_transpose2d(
        signal, conv.weight, None, conv.stride, conv.padding, tuple(output_padding), conv.groups, conv.dilation
    )

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
largest intermediate signal of a chunk holds at most `max_batch_elements` numbers.

One activation only reaches its receptive field (7 px for ZFNet's layer 1 at 224 input, 139 px for layer
5), so `mode="max"` and `project_activations` send each one down on a window that follows the receptive
field from level to level instead of the whole map: the same sums, restricted to where they are nonzero.
`project_activations` projects listed activations (image, map, row, col) and returns just those windows,
which is what the top-9 figure and the feature-evolution callback need. The model is left
as it was: no gradients, same weights, same train/eval mode of every module; the images are not changed.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from zf_lightning.deconv.general import GeneralDeconvnet
from zf_lightning.models.layers import PaperLayers, numbered_layers, resolve_layer
from zf_lightning.utils.errors import InputError, InputTypeError
from zf_lightning.utils.modes import evaluating
from zf_lightning.utils.validation import as_int

MODES = ("max", "map")
METHODS = ("deconvnet", "guided", "gradient")
SUPPORTED_MODULES = (nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.LocalResponseNorm)

_Coordinate = TypeVar("_Coordinate", int, torch.Tensor)


@dataclass(frozen=True)
class ReceptiveField:
    """Where in the input an activation of a layer looks: rows `offset[0] + row * stride[0]` onwards, `size[0]` of them.

    `offset` is negative where the window reaches into the zero padding of the first layers.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def window(self, row: _Coordinate, col: _Coordinate) -> tuple[_Coordinate, _Coordinate]:
        """(top, left) input coordinates of the window of the activation at (row, col) (ints or tensors)."""
        return self.offset[0] + row * self.stride[0], self.offset[1] + col * self.stride[1]


@dataclass
class Projections:
    """Projections of single activations, each cut to its receptive-field window of the input.

    windows[n] covers input rows top[n] .. top[n] + H - 1 and columns left[n] .. left[n] + W - 1, where
    (H, W) = receptive_field.size; parts of a window outside the image (padding) are zero.
    """

    windows: torch.Tensor  # (N, C, H, W)
    top: torch.Tensor  # (N,) int64
    left: torch.Tensor  # (N,) int64
    values: torch.Tensor  # (N,) the activation that was projected
    receptive_field: ReceptiveField
    rows: torch.Tensor | None = None  # (N,) int64: where in its map the activation is
    cols: torch.Tensor | None = None

    def patches(self, images: torch.Tensor, image_index: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """(N, C, H, W): the input under each window, cut from `images` (the projected inputs, or the same crops
        for display), image `image_index[n]` for window n; zero outside the image."""
        return cut_windows(images, image_index, self.top, self.left, self.receptive_field.size)

    def paste(self, image_size: tuple[int, int]) -> torch.Tensor:
        """(N, C, *image_size): each window put at its place in an otherwise zero image."""
        n, c, h, w = self.windows.shape
        height, width = image_size
        flat, valid = _window_index(self.top, self.left, h, w, height, width)
        canvas = self.windows.new_zeros(n, c, height * width)
        values = (self.windows * valid[:, None]).reshape(n, c, h * w)
        canvas.scatter_add_(2, flat.reshape(n, 1, h * w).expand(n, c, h * w), values)
        return canvas.reshape(n, c, height, width)


@dataclass
class _Record:
    """What the downward pass needs from the forward pass at one module."""

    module: nn.Module
    input_shape: tuple[int, ...]  # (B, C, H, W) of the module's input
    saved: torch.Tensor | None = None  # ReLU: input > 0 (bool); MaxPool2d: the switches (int64)


class Deconvnet:
    """Project feature activations of any conv net back to the input (see the module docstring).

    Args:
        model: any nn.Module taking one (B, C, H, W) tensor. Networks whose `features` is an nn.Sequential of
            Conv2d, ReLU, MaxPool2d and LocalResponseNorm modules (or that nn.Sequential itself) take the fast
            windowed path for their paper layers; every other network or layer takes the general path
            (`zf_lightning.deconv.general`).
        max_batch_elements: memory budget of the downward pass, in tensor elements: (image, map) pairs
            are sent down in chunks whose largest intermediate signal holds at most this many numbers
            (at least one pair per chunk). None sends all pairs at once.

    A `layer` is the paper's number (conv layer 1..num_layers, `models.layers.numbered_layers`), or the name of a
    module as in `model.named_modules()` ("layer4.1", "features.29"), whose output is then the feature map; also
    "fc6"/"fc7" where the network has those hidden dense layers. A name that is a paper layer of the fast path
    ("features.29" of VGG-16 is conv5_3's ReLU, layer 13) takes the fast path.
    """

    def __init__(self, model: nn.Module, max_batch_elements: int | None = 2**25) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"Deconvnet: model must be an nn.Module, got {type(model).__name__}")
        self.model = model
        try:
            layers: PaperLayers | None = PaperLayers(model)
        except TypeError:
            layers = None
        # conv -> BatchNorm (eval) pairs are folded into one conv of the same function, so that VGG-bn keeps the
        # windowed path; the folded copy follows the live weights (`fast_features`).
        self._unfolded = layers.features if layers is not None and _foldable(layers.features) else None
        if self._unfolded is not None:
            self._folded_versions: tuple[int, ...] = ()
            layers = PaperLayers(_fold_batch_norms(self._unfolded))
        self.layers = layers
        self.features = layers.features if layers is not None else None
        self.conv_indices = [layer.weights for layer in layers.conv] if layers is not None else []
        if layers is not None and not self.conv_indices:
            raise InputError("Deconvnet: the features contain no Conv2d layer")
        if layers is None and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise InputTypeError(
                f"Deconvnet: {type(model).__name__} has no nn.Conv2d module: the deconvnet projects the feature maps "
                "of a conv net (one with an nn.Sequential `features` of conv layers, or any nn.Module with Conv2d "
                "modules)"
            )
        if max_batch_elements is not None and max_batch_elements < 1:
            raise InputError(f"Deconvnet: max_batch_elements must be >= 1 or None, got {max_batch_elements}")
        self.max_batch_elements = max_batch_elements
        # Why the fast path cannot take this network (None: it can): any other module goes the general way.
        self.fast_path_problem = (
            _fast_path_problem(self.features)
            if self.features is not None
            else (f"{type(model).__name__} has no nn.Sequential `features`")
        )
        self.fast = self.fast_path_problem is None
        self._numbered = numbered_layers(model)
        self._convs = [layer for layer in self._numbered if layer.kind == "conv"]
        # Module names that are exactly a fast paper layer's feature map: "features.29" -> 13 on VGG-16.
        self._fast_names = {layer.output: layer.number for layer in self._convs if self.fast and layer.number}
        self.general = GeneralDeconvnet(model, max_batch_elements)

    @property
    def fast_features(self) -> nn.Sequential:
        """The `features` nn.Sequential that the fast path walks (only fast-path layers ask for it); with its
        BatchNorms folded into the convolutions before them, refolded whenever the network's weights changed."""
        if self.features is None:
            raise InputError(f"Deconvnet: {type(self.model).__name__} has no nn.Sequential `features`")
        if self._unfolded is not None:
            versions = tuple(t._version for t in (*self._unfolded.parameters(), *self._unfolded.buffers()))
            if versions != self._folded_versions:
                self.features = _fold_batch_norms(self._unfolded)
                self._folded_versions = versions
        return self.features

    @property
    def num_layers(self) -> int:
        """The number of conv layers (valid integer `layer` values are 1..num_layers)."""
        return len(self.conv_indices) if self.layers is not None else len(self._convs)

    def num_maps(self, layer: int | str) -> int:
        """The number of feature maps of `layer` (a module's: its output channels, from a probe forward)."""
        target = self._target(layer)
        if target.number is None:
            assert target.name is not None  # a target is one or the other
            return self.general.num_maps(target.name)
        # conv_indices are the indices of the Conv2d modules of features
        return cast(nn.Conv2d, self.fast_features[self.conv_indices[target.number - 1]]).out_channels

    def _check_layer(self, layer: object) -> int:
        """`layer` as an int in 1..num_layers, or an InputError."""
        number = as_int(layer)
        if number is None or not 1 <= number <= self.num_layers:
            raise InputError(
                f"Deconvnet: layer must be an int in 1..{self.num_layers} (the model has {self.num_layers} "
                f"conv layers) or a module name, got {layer!r}"
            )
        return number

    def _target(self, layer: object) -> _Target:
        """Where `layer` is computed: a paper conv layer of the fast path, or a module of the general path."""
        if isinstance(layer, str):
            try:
                named = resolve_layer(self.model, layer)
            except InputError as error:
                raise InputError(f"Deconvnet: {error}") from None
            if named.kind != "dense" and named.output in self._fast_names:
                return _Target(layer, self._fast_names[named.output], None)
            return _Target(layer, None, named.output)
        number = self._check_layer(layer)
        if self.fast:
            return _Target(number, number, None)
        return _Target(number, None, self._convs[number - 1].output)

    def feature_map_index(self, layer: int) -> int:
        """Index in `features` of the module whose output is layer `layer`'s feature map (its ReLU, if any)."""
        if self.layers is None:
            raise InputError(
                f"Deconvnet: feature_map_index needs a network with an nn.Sequential `features`; "
                f"{type(self.model).__name__} has none"
            )
        return self._top_index(self._check_layer(layer))

    def _top_index(self, layer: int) -> int:
        assert self.layers is not None  # only fast-path layers get here
        return self.layers.conv[layer - 1].rectified

    def receptive_field(self, layer: int | str, image_size: tuple[int, int] | None = None) -> ReceptiveField:
        """The input window seen by one activation of layer `layer` (sizes follow from kernels, strides, padding).

        On the general path the window is the whole image (`image_size`, which it needs): its projections are not
        cut.
        """
        target = self._target(layer)
        if target.number is None:
            if image_size is None:
                raise InputError(
                    f"Deconvnet: layer {layer!r} takes the general path, whose projections cover the whole image; "
                    "give image_size to get that window"
                )
            return _full_field(image_size)
        number = target.number
        assert self.features is not None  # fast targets exist only with features
        size, stride, offset = [1, 1], [1, 1], [0, 0]
        for module in list(self.fast_features)[: self.conv_indices[number - 1] + 1]:
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                kernel, step, pad, dilation = (
                    _pair(getattr(module, name)) for name in ("kernel_size", "stride", "padding", "dilation")
                )
                for axis in (0, 1):
                    offset[axis] -= pad[axis] * stride[axis]
                    size[axis] += dilation[axis] * (kernel[axis] - 1) * stride[axis]
                    stride[axis] *= step[axis]
        return ReceptiveField((size[0], size[1]), (stride[0], stride[1]), (offset[0], offset[1]))

    def feature_maps(self, images: torch.Tensor, layers: Sequence[int | str]) -> dict[Any, torch.Tensor]:
        """{layer: (B, maps, h, w)}: the maps of each listed layer, from one forward pass per path.

        Keys are the layers as given (integers as ints); a paper layer's map is the rectified conv output.
        """
        targets = [self._target(layer) for layer in layers]
        out: dict[Any, torch.Tensor] = {}
        numbers = sorted({t.number for t in targets if t.number is not None})
        if numbers:
            fast = self._fast_feature_maps(images, numbers)
            out.update({t.key: fast[t.number] for t in targets if t.number is not None})
        names = sorted({t.name for t in targets if t.name is not None})
        if names:
            general = self.general.feature_maps(images, names)
            out.update({t.key: general[t.name] for t in targets if t.name is not None})
        return out

    def _fast_feature_maps(self, images: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        assert self.features is not None  # only fast-path layers get here
        tops = {self._top_index(layer): layer for layer in layers}
        out: dict[int, torch.Tensor] = {}
        with evaluating(self.fast_features):
            x = images
            for index, module in enumerate(list(self.fast_features)[: max(tops) + 1]):
                x = F.relu(x) if isinstance(module, nn.ReLU) else module(x)
                if index in tops:
                    out[tops[index]] = x
        return out

    def project_activations(
        self,
        images: torch.Tensor,
        layer: int | str,
        image_index: torch.Tensor | Sequence[int],
        maps: torch.Tensor | Sequence[int],
        rows: torch.Tensor | Sequence[int],
        cols: torch.Tensor | Sequence[int],
        method: str = "deconvnet",
    ) -> Projections:
        """Project single activations: entry n is map `maps[n]` at (`rows[n]`, `cols[n]`) of image `image_index[n]`.

        Each image goes forward once however many entries use it; on the fast path each entry goes down on its
        receptive field only (see the module docstring), on the general path on the whole image. Returns the
        windows, not whole images: `Projections.paste` places them in image-sized canvases.
        """
        projections = self.project_activations_by_layer(images, {layer: (image_index, maps, rows, cols)}, method)
        return projections[self._target(layer).key]

    def project_strongest(
        self, images: torch.Tensor, layer: int | str, maps: torch.Tensor | Sequence[int], method: str = "deconvnet"
    ) -> Projections:
        """Image n's strongest activation of map `maps[n]` (its first maximum in row-major order, as `argmax`),
        projected on its receptive-field window: what Fig. 4 (feature evolution) and Fig. 7(c) (occlusion) show.
        `Projections.rows`/`cols` say where the activation is, `paste` puts the windows in image-sized canvases."""
        self._check_images(images)
        target = self._target(layer)
        maps = torch.as_tensor(maps, device=images.device, dtype=torch.long).reshape(-1)
        if maps.numel() != images.shape[0]:
            raise InputError(
                f"Deconvnet: project_strongest takes one map per image, got {maps.numel()} maps for "
                f"{images.shape[0]} images"
            )
        self._check_map_tensor(target, maps, images)
        own = torch.arange(len(maps), device=images.device)
        if target.number is None:
            assert target.name is not None  # a target is one or the other
            self._check_method(method)
            values, rows, cols, windows = self.general.project(images, target.name, own, maps, None, None, method)
            return _full_projections(windows, values, rows, cols, images)
        number = target.number
        activation = self.feature_maps(images, [number])[number]  # (N, maps, h, w)
        where = activation[own, maps].flatten(1).argmax(dim=1)
        width = activation.shape[3]
        return self.project_activations(images, number, own, maps, where // width, where % width, method=method)

    def project_activations_by_layer(
        self, images: torch.Tensor, requests: Mapping[Any, tuple], method: str = "deconvnet"
    ) -> dict[Any, Projections]:
        """`project_activations` for several layers at once: {layer: (image_index, maps, rows, cols)}.

        An image used by several fast-path layers goes forward once, up to the deepest of them; each
        general-path layer has its own forward. Keys are the layers as given (integers as ints).
        """
        self._check_images(images)
        self._check_method(method)
        device = images.device
        fast: dict[int, list[tuple[Any, tuple[torch.Tensor, ...]]]] = {}
        general: list[tuple[_Target, tuple[torch.Tensor, ...]]] = []
        for layer, request in requests.items():
            target = self._target(layer)
            image_index, maps, rows, cols = (
                torch.as_tensor(v, device=device, dtype=torch.long).reshape(-1) for v in request
            )
            if not len({image_index.numel(), maps.numel(), rows.numel(), cols.numel()}) == 1:
                raise InputError("Deconvnet: image_index, maps, rows and cols must have the same length")
            self._check_map_tensor(target, maps, images)
            if image_index.numel() and (image_index.min() < 0 or image_index.max() >= images.shape[0]):
                raise InputError(f"Deconvnet: image_index out of range for {images.shape[0]} images")
            if target.number is not None:
                fast.setdefault(target.number, []).append((target.key, (image_index, maps, rows, cols)))
            else:
                self.general.check_method(method)
                general.append((target, (image_index, maps, rows, cols)))

        results: dict[Any, Projections] = {}
        if fast:
            # Two keys of one paper layer (13 and "features.29") go down together and are split afterwards.
            checked = {
                number: tuple(torch.cat([request[i] for _, request in listed]) for i in range(4))
                for number, listed in fast.items()
            }
            assert self.features is not None  # fast targets exist only with features
            with evaluating(self.fast_features):
                projected = self._project_activations(images, checked, method)  # type: ignore[arg-type]
            for number, listed in fast.items():
                start = 0
                for key, request in listed:
                    results[key] = _slice_projections(projected[number], start, start + request[0].numel())
                    start += request[0].numel()
        for target, (image_index, maps, rows, cols) in general:
            assert target.name is not None  # general targets have a module name
            values, rows, cols, windows = self.general.project(
                images, target.name, image_index, maps, rows, cols, method
            )
            results[target.key] = _full_projections(windows, values, rows, cols, images)
        return results

    # ---------------------------------------------------------------- forward
    def _forward(
        self, images: torch.Tensor, top: int, masks: bool = True, keep: Container[int] = ()
    ) -> tuple[torch.Tensor, list[_Record], dict[int, torch.Tensor]]:
        """Run features[0..top] functionally, recording pooling switches (and ReLU masks if `masks`).

        Returns the output, the records, and {index: output} of the modules whose indices are in `keep`.
        """
        records: list[_Record] = []
        kept: dict[int, torch.Tensor] = {}
        x = images
        for index, module in enumerate(list(self.fast_features)[: top + 1]):
            record = _Record(module, tuple(x.shape))
            if isinstance(module, nn.ReLU):
                record.saved = (x > 0) if masks else None
                x = F.relu(x)  # never in place: the recorded tensors and the input stay intact
            elif isinstance(module, nn.MaxPool2d):
                x, record.saved = F.max_pool2d(
                    x,
                    module.kernel_size,
                    module.stride,
                    module.padding,
                    module.dilation,
                    ceil_mode=module.ceil_mode,
                    return_indices=True,
                )
            else:  # Conv2d, LocalResponseNorm: out of place, eval mode
                x = module(x)
            records.append(record)
            if index in keep:
                kept[index] = x
        return x, records, kept

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
                    assert record.saved is not None  # ReLU masks are recorded for every method but "deconvnet"
                    mask = record.saved.index_select(0, rows)
                    if method == "guided":
                        signal = F.relu(signal)
                    signal = signal * mask
            elif isinstance(module, nn.MaxPool2d):
                n, c, oh, ow = signal.shape
                h, w = record.input_shape[2:]
                assert record.saved is not None  # the switches are always recorded
                switches = record.saved.index_select(0, rows).reshape(n, c, oh * ow)
                unpooled = signal.new_zeros(n, c, h * w)
                unpooled.scatter_add_(2, switches, signal.reshape(n, c, oh * ow))
                signal = unpooled.reshape(n, c, h, w)
            elif isinstance(module, nn.Conv2d):
                signal = _conv_transpose(signal, module, record.input_shape[2:])
            # LocalResponseNorm: identity
        return signal

    @staticmethod
    def _down_windows(
        signal: torch.Tensor,
        top: torch.Tensor,
        left: torch.Tensor,
        records: list[_Record],
        rows: torch.Tensor,
        method: str,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Send windows down: `signal` (N, C, h, w) sits at (`top`, `left`) of the full map above `records`.

        Each step grows the window by exactly what the module below can reach and drops what falls in the
        padding, so the result equals the full-map pass restricted to the window.
        """
        for record in reversed(records):
            module = record.module
            n, c, h, w = signal.shape
            if isinstance(module, nn.ReLU):
                if method == "deconvnet":
                    signal = F.relu(signal)
                else:
                    assert record.saved is not None  # ReLU masks are recorded for every method but "deconvnet"
                    mask = _gather_window(record.saved, rows, top, left, h, w)
                    if method == "guided":
                        signal = F.relu(signal)
                    signal = signal * mask
            elif isinstance(module, nn.MaxPool2d):
                height, width = record.input_shape[2:]
                kernel, step, pad, dilation = (
                    _pair(getattr(module, name)) for name in ("kernel_size", "stride", "padding", "dilation")
                )
                assert record.saved is not None  # the switches are always recorded
                switches = _gather_window(record.saved, rows, top, left, h, w)  # flat indices into the input map
                top, left = top * step[0] - pad[0], left * step[1] - pad[1]
                new_h = (h - 1) * step[0] + dilation[0] * (kernel[0] - 1) + 1
                new_w = (w - 1) * step[1] + dilation[1] * (kernel[1] - 1) + 1
                local = (switches // width - top[:, None, None, None]) * new_w + (
                    switches % width - left[:, None, None, None]
                )
                # Outside the map the signal is zero; any in-range index will do for those entries.
                local = local.clamp_(0, new_h * new_w - 1).reshape(n, c, h * w)
                unpooled = signal.new_zeros(n, c, new_h * new_w)
                unpooled.scatter_add_(2, local, signal.reshape(n, c, h * w))
                signal = unpooled.reshape(n, c, new_h, new_w)
            elif isinstance(module, nn.Conv2d):
                height, width = record.input_shape[2:]
                assert not isinstance(module.padding, str)  # string padding is rejected in Deconvnet.__init__
                signal = F.conv_transpose2d(
                    signal, module.weight, None, module.stride, 0, 0, module.groups, module.dilation
                )
                top, left = top * module.stride[0] - module.padding[0], left * module.stride[1] - module.padding[1]
                _, valid = _window_index(top, left, signal.shape[2], signal.shape[3], height, width)
                signal = signal * valid[:, None]  # what lands in the padding is not part of the input
            # LocalResponseNorm: identity
        return signal, top, left

    def _project_activations(
        self,
        images: torch.Tensor,
        requests: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        method: str,
    ) -> dict[int, Projections]:
        device = images.device
        results: dict[int, Projections] = {}
        for layer, (image_index, _maps, rows, cols) in requests.items():
            field = self.receptive_field(layer)
            windows = images.new_zeros(image_index.numel(), images.shape[1], *field.size)
            top, left = field.window(rows, cols)
            results[layer] = Projections(windows, top, left, images.new_zeros(image_index.numel()), field, rows, cols)
        requests = {layer: request for layer, request in requests.items() if request[0].numel()}
        if not requests:
            return results

        # Images go forward in chunks (their recorded switches and masks take memory), each only once,
        # up to the deepest layer that uses them.
        top_of = {layer: self._top_index(layer) for layer in requests}
        deepest = max(top_of.values())
        used = torch.unique(torch.cat([request[0] for request in requests.values()]))
        per_image = self._forward_elements(images.shape[1:], deepest)
        image_chunk = len(used) if self.max_batch_elements is None else max(1, self.max_batch_elements // per_image)
        for start in range(0, len(used), image_chunk):
            chunk_images = used[start : start + image_chunk]
            local_of = torch.full((images.shape[0],), -1, dtype=torch.long, device=device)
            local_of[chunk_images] = torch.arange(len(chunk_images), device=device)
            _, records, kept = self._forward(
                images.index_select(0, chunk_images), deepest, masks=method != "deconvnet", keep=set(top_of.values())
            )
            for layer, (image_index, maps, rows, cols) in requests.items():
                activation = kept[top_of[layer]]
                below = records[: self.conv_indices[layer - 1] + 1]
                entries = (local_of[image_index] >= 0).nonzero().flatten()
                entry_chunk = (
                    len(entries)
                    if self.max_batch_elements is None
                    else max(1, self.max_batch_elements // self._window_elements(layer))
                )
                for first in range(0, len(entries), entry_chunk):
                    picked = entries[first : first + entry_chunk]
                    local_rows = local_of[image_index[picked]]
                    value = activation[local_rows, maps[picked], rows[picked], cols[picked]]
                    results[layer].values[picked] = value
                    # A zero activation projects to zero under every rule: no need to send it down.
                    live = value != 0
                    picked, local_rows, value = picked[live], local_rows[live], value[live]
                    if not len(picked):
                        continue
                    signal = activation.new_zeros(len(picked), activation.shape[1], 1, 1)
                    signal[torch.arange(len(picked), device=device), maps[picked], 0, 0] = value
                    out, _, _ = self._down_windows(
                        signal, rows[picked].clone(), cols[picked].clone(), below, local_rows, method
                    )
                    results[layer].windows[picked] = out
        return results

    def _forward_elements(self, image_shape: Sequence[int], top_index: int) -> int:
        """Numbers `_forward` keeps per image up to features[top_index] (a memory estimate for chunking)."""
        channels, height, width = image_shape
        total = 0
        for module in list(self.fast_features)[: top_index + 1]:
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                height, width = _output_size(module, height, width)
                channels = module.out_channels if isinstance(module, nn.Conv2d) else channels
            total += 2 * channels * height * width  # the output and the recorded mask or switches
        return max(1, total)

    def _window_elements(self, layer: int) -> int:
        """Numbers in the largest window signal of one entry on its way down from `layer`."""
        h = w = 1
        channels = self.num_maps(layer)
        largest = channels
        for module in reversed(list(self.fast_features)[: self.conv_indices[layer - 1] + 1]):
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
                kernel, step, _, dilation = (
                    _pair(getattr(module, name)) for name in ("kernel_size", "stride", "padding", "dilation")
                )
                h = (h - 1) * step[0] + dilation[0] * (kernel[0] - 1) + 1
                w = (w - 1) * step[1] + dilation[1] * (kernel[1] - 1) + 1
                if isinstance(module, nn.Conv2d):
                    channels = module.in_channels
                largest = max(largest, channels * h * w)
        return largest

    def _project_max(self, images: torch.Tensor, layer: int, map_list: list[int], method: str) -> torch.Tensor:
        """mode="max": find each map's strongest location, then project those activations on their windows."""
        batch = images.shape[0]
        activation = self.feature_maps(images, [layer])[layer]
        k, (h, w) = len(map_list), activation.shape[2:]
        chosen = activation[:, map_list].reshape(batch, k, h * w)
        where = chosen.argmax(dim=2)  # first maximum in row-major order
        image_index = torch.arange(batch, device=images.device).repeat_interleave(k)
        maps = torch.tensor(map_list, device=images.device).repeat(batch)
        where = where.reshape(-1)
        projections = self._project_activations(images, {layer: (image_index, maps, where // w, where % w)}, method)[
            layer
        ]
        return projections.paste((images.shape[2], images.shape[3])).reshape(batch, k, *images.shape[1:])

    def _check_images(self, images: object) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise InputError(f"Deconvnet: images must be a 4-D (B, C, H, W) tensor, got {shape}")

    def _check_map_tensor(self, target: _Target | int, maps: torch.Tensor, images: torch.Tensor | None = None) -> None:
        if isinstance(target, int):
            target = _Target(target, target, None)
        num_maps = self._num_maps_of(target, images)
        bad = maps[(maps < 0) | (maps >= num_maps)]
        if bad.numel():
            raise InputError(
                f"Deconvnet: map index(es) {bad.tolist()} out of range: layer {target.key} has {num_maps} maps "
                f"(valid indices 0..{num_maps - 1})"
            )

    def _num_maps_of(self, target: _Target, images: torch.Tensor | None) -> int:
        if target.name is not None:
            return self.general.num_maps(target.name, images)  # probed on these images, not a 224 dummy
        return self.num_maps(target.key)

    def _check_method(self, method: str) -> None:
        if method not in METHODS:
            raise InputError(f"Deconvnet: unknown method {method!r}; allowed methods are {list(METHODS)}")

    # ------------------------------------------------------------------ public
    def project(
        self,
        images: torch.Tensor,
        layer: int | str,
        maps: int | Sequence[int],
        mode: str = "max",
        method: str = "deconvnet",
    ) -> torch.Tensor:
        """Project the chosen feature maps of `layer` down to the input.

        Args:
            images: (B, C, H, W) input batch, on the model's device and in its dtype.
            layer: the paper's conv layer number (1-based, among the Conv2d modules) or a module name.
            maps: the feature map(s) of that layer to project (0-based channel indices).
            mode: "max" (only the strongest activation of each map) or "map" (the whole map).
            method: "deconvnet", "guided" or "gradient" (see the module docstring).

        Returns:
            (B, len(maps), C, H, W): out[b, k] is the projection of map maps[k] for image b.
        """
        self._check_images(images)
        target = self._target(layer)
        if mode not in MODES:
            raise InputError(f"Deconvnet: unknown mode {mode!r}; allowed modes are {list(MODES)}")
        self._check_method(method)
        requested = [maps] if as_int(maps) is not None else list(cast(Sequence[int], maps))
        num_maps = self._num_maps_of(target, images)
        if not requested:
            raise InputError("Deconvnet: maps is empty; give at least one feature map index")
        numbers = [as_int(m) for m in requested]
        bad = [m for m, number in zip(requested, numbers) if number is None or not 0 <= number < num_maps]
        if bad:
            raise InputError(
                f"Deconvnet: map index(es) {bad} out of range: layer {target.key} has {num_maps} maps "
                f"(valid indices 0..{num_maps - 1})"
            )
        map_list = [number for number in numbers if number is not None]  # none is None after the check above

        if target.number is None:
            assert target.name is not None  # a target is one or the other
            self.general.check_method(method)
            batch, k = images.shape[0], len(map_list)
            image_index = torch.arange(batch, device=images.device).repeat_interleave(k)
            chosen = torch.tensor(map_list, device=images.device).repeat(batch)
            *_, out = self.general.project(
                images, target.name, image_index, chosen, None, None, method, whole_map=mode == "map"
            )
            return out.reshape(batch, k, *images.shape[1:])
        assert self.features is not None  # fast targets exist only with features
        with evaluating(self.fast_features):
            return self._project(images, target.number, map_list, mode, method)

    def _project(self, images: torch.Tensor, layer: int, map_list: list[int], mode: str, method: str) -> torch.Tensor:
        if mode == "max":
            return self._project_max(images, layer, map_list, method)
        top = self._top_index(layer)
        activation, records, _ = self._forward(images, top, masks=method != "deconvnet")
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


@dataclass(frozen=True)
class _Target:
    """A layer as the engine computes it: `number` on the fast path, or the module `name` on the general path."""

    key: Any  # what the caller gets results under: the layer as given, integers as ints
    number: int | None
    name: str | None


def _fast_path_problem(features: nn.Sequential) -> str | None:
    """Why the fast windowed path cannot invert `features` (a module it does not know, string padding), or None."""
    supported = ", ".join(cls.__name__ for cls in SUPPORTED_MODULES)
    for index, module in enumerate(features):
        if type(module) not in SUPPORTED_MODULES:
            return f"features[{index}] is a {type(module).__name__} (the fast path inverts {supported})"
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return (
                f"features[{index}] is a Conv2d with padding={module.padding!r}, padding_mode={module.padding_mode!r} "
                "(the fast path needs explicit zero padding)"
            )
    return None


def _full_field(image_size: tuple[int, int]) -> ReceptiveField:
    """The window of a general-path projection: the whole image, at (0, 0) whatever the activation's place."""
    return ReceptiveField((int(image_size[0]), int(image_size[1])), (0, 0), (0, 0))


def _full_projections(
    windows: torch.Tensor, values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, images: torch.Tensor
) -> Projections:
    zeros = torch.zeros(windows.shape[0], dtype=torch.long, device=windows.device)
    field = _full_field((images.shape[2], images.shape[3]))
    return Projections(windows, zeros, zeros.clone(), values, field, rows, cols)


def _slice_projections(projections: Projections, start: int, stop: int) -> Projections:
    if start == 0 and stop == projections.windows.shape[0]:
        return projections
    return Projections(
        projections.windows[start:stop],
        projections.top[start:stop],
        projections.left[start:stop],
        projections.values[start:stop],
        projections.receptive_field,
        None if projections.rows is None else projections.rows[start:stop],
        None if projections.cols is None else projections.cols[start:stop],
    )


def _window_index(
    top: torch.Tensor, left: torch.Tensor, h: int, w: int, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices into a (height, width) map of the (h, w) windows at (top, left), clamped, and which are inside."""
    ys = top[:, None] + torch.arange(h, device=top.device)
    xs = left[:, None] + torch.arange(w, device=left.device)
    valid = ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
    flat = ys.clamp(0, height - 1)[:, :, None] * width + xs.clamp(0, width - 1)[:, None, :]
    return flat, valid


def _gather_window(
    tensor: torch.Tensor, rows: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """(N, C, h, w) windows of `tensor` (B, C, H, W): image rows[n] at (top[n], left[n]); zero outside."""
    batch, channels, height, width = tensor.shape
    flat, valid = _window_index(top, left, h, w, height, width)
    picked = tensor.reshape(batch, channels, height * width)[rows[:, None, None], :, flat]  # (N, h, w, C)
    picked = picked.permute(0, 3, 1, 2)
    return picked * valid[:, None] if picked.dtype != torch.bool else picked & valid[:, None]


def _output_size(module: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Spatial size after a Conv2d or MaxPool2d (PyTorch's formulas, ceil mode included)."""
    kernel, step, pad, dilation = (
        _pair(getattr(module, name)) for name in ("kernel_size", "stride", "padding", "dilation")
    )
    ceil = isinstance(module, nn.MaxPool2d) and module.ceil_mode
    sizes = []
    for size, k, s, p, d in zip((height, width), kernel, step, pad, dilation):
        span = size + 2 * p - d * (k - 1) - 1
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + p:  # the last window must start inside the input or left padding
            out -= 1
        sizes.append(out)
    return sizes[0], sizes[1]


def cut_windows(
    images: torch.Tensor,
    image_index: torch.Tensor | Sequence[int],
    top: torch.Tensor | Sequence[int],
    left: torch.Tensor | Sequence[int],
    size: tuple[int, int],
) -> torch.Tensor:
    """(N, C, *size) windows of `images` (B, C, H, W): window n from image image_index[n] at (top[n], left[n]).

    Parts outside the image are zero, as in the receptive fields of the first layers' padding.
    """
    device = images.device
    image_index, top, left = (
        torch.as_tensor(v, dtype=torch.long, device=device).reshape(-1) for v in (image_index, top, left)
    )
    return _gather_window(images, image_index, top, left, size[0], size[1])


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _conv_transpose(signal: torch.Tensor, conv: nn.Conv2d, input_size: Iterable[int]) -> torch.Tensor:
    """The transpose of `conv` (no bias), with an output exactly `input_size` wide."""
    out_h, out_w = signal.shape[2:]
    assert not isinstance(conv.padding, str)  # string padding is rejected in Deconvnet.__init__
    output_padding = []
    for size, out, k, s, p, d in zip(
        input_size, (out_h, out_w), conv.kernel_size, conv.stride, conv.padding, conv.dilation
    ):
        output_padding.append(size - ((out - 1) * s - 2 * p + d * (k - 1) + 1))
    return F.conv_transpose2d(
        signal, conv.weight, None, conv.stride, conv.padding, tuple(output_padding), conv.groups, conv.dilation
    )


def _foldable(features: nn.Sequential) -> bool:
    """Whether `features` has BatchNorm2d modules and each directly follows a Conv2d of its width and keeps running
    statistics: then folding them gives an nn.Sequential of the same function in eval mode."""
    norms = [index for index, module in enumerate(features) if isinstance(module, nn.BatchNorm2d)]
    for index in norms:
        norm, conv = features[index], features[index - 1] if index else None
        if not isinstance(conv, nn.Conv2d) or conv.out_channels != norm.num_features or norm.running_var is None:
            return False
    return bool(norms)


def _fold_batch_norms(features: nn.Sequential) -> nn.Sequential:
    """A copy of `features` with each conv -> BatchNorm2d pair as one Conv2d computing the pair in eval mode:
    W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps). The deconvnet passes BatchNorm down as
    the linear map it is (times s), which the folded filters' transpose does. Other modules are shared, not copied."""
    modules: list[nn.Module] = []
    with torch.no_grad():
        for module in features:
            if isinstance(module, nn.BatchNorm2d):
                conv = modules[-1]
                mean, var = module.running_mean, module.running_var
                assert isinstance(conv, nn.Conv2d) and mean is not None and var is not None  # checked by _foldable
                scale = (var + module.eps).rsqrt()
                shift = -mean * scale
                if module.affine:
                    scale, shift = scale * module.weight, shift * module.weight + module.bias
                folded = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,  # type: ignore[arg-type]
                    conv.stride,  # type: ignore[arg-type]
                    conv.padding,  # type: ignore[arg-type]
                    conv.dilation,  # type: ignore[arg-type]
                    conv.groups,
                    bias=True,
                    padding_mode=conv.padding_mode,
                ).to(device=conv.weight.device, dtype=conv.weight.dtype)
                folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
                assert folded.bias is not None  # built with bias=True
                folded.bias.copy_(bias * scale + shift)
                folded.requires_grad_(False)
                modules[-1] = folded
            else:
                modules.append(module)
    return nn.Sequential(*modules)

"""The network family of the paper: 5 conv layers and 3 dense layers, as `features` + `classifier`.

ZFNet (Zeiler & Fergus 2014, Fig. 3) and AlexNet (Krizhevsky 2012) differ only in their conv layer
specs and where contrast normalisation sits, so both are built here from a list of `ConvSpec`s.
Layer numbering follows the paper: conv1-5 are layers 1-5, fc6-fc8 are layers 6-8.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from zf_lightning.utils.errors import InputError

CONV_LAYERS = (1, 2, 3, 4, 5)
DENSE_LAYERS = (6, 7)
REMOVABLE_LAYERS = (3, 4, 6, 7)  # the paper's Table 3 removes conv3, conv4, fc6 and fc7
NORM_POSITIONS = ("after_pool", "before_pool")
# Where fc6 and fc7 drop out: on their outputs (Caffe's relu -> drop, the paper's) or on their inputs (torchvision's
# AlexNet: dropout -> linear -> relu). The same function in eval mode; kept so that converted networks train alike.
DROPOUT_POSITIONS = ("after_relu", "before_linear")

POOL_KERNEL, POOL_STRIDE = 3, 2


@dataclass(frozen=True)
class ConvSpec:
    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    pool: bool = False
    norm: bool = False
    groups: int = 1  # Krizhevsky's two towers: each half of the maps sees only its half of the input maps


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _pool_out(size: int, ceil_mode: bool = True) -> int:
    if not ceil_mode:  # torchvision's AlexNet
        return (size - POOL_KERNEL) // POOL_STRIDE + 1
    # ceil_mode, as Caffe and cuda-convnet pool: this is what makes ZFNet's maps 55 and 13 wide.
    out = math.ceil((size - POOL_KERNEL) / POOL_STRIDE) + 1
    if (out - 1) * POOL_STRIDE >= size:  # PyTorch drops a last window that starts outside the input
        out -= 1
    return out


class PaperConvNet(nn.Module):
    """`features` (conv/ReLU/pool/LRN) -> flatten -> `classifier` (dropout/linear/ReLU).

    Besides the options of `zfnet`, a few that networks trained elsewhere need to be built here with their own
    function (`zf_lightning.models.pretrained.to_paper_network`): `lrn` (the constants of `nn.LocalResponseNorm`),
    `pool_ceil_mode` (False: PyTorch's default flooring of the pooled size), `dropout_position` ("after_relu" or
    "before_linear") and `adaptive_pool` (an `nn.AdaptiveAvgPool2d(n)` between features and classifier, as
    torchvision's AlexNet has; None: none).

    `init_std`: every weight ~ N(0, init_std^2), biases 0 (the paper's 0.01); None keeps PyTorch's fan-in init.
    `conv1_init_std`: conv1's weights ~ N(0, conv1_init_std^2) whatever `init_std` says (None: as the others).
    """

    def __init__(
        self,
        convs: Sequence[ConvSpec],
        num_classes: int = 1000,
        *,
        fc_widths: Sequence[int] = (4096, 4096),
        removed_layers: Iterable[int] = (),
        local_response_norm: bool = True,
        norm_position: str = "after_pool",
        lrn: dict | None = None,
        width_multiplier: float = 1.0,
        input_size: int = 224,
        in_channels: int = 3,
        dropout: float = 0.5,
        init_std: float | None = 0.01,
        conv1_init_std: float | None = None,
        name: str = "convnet",
        pool_ceil_mode: bool = True,
        dropout_position: str = "after_relu",
        adaptive_pool: int | None = None,
    ) -> None:
        super().__init__()
        removed = sorted({int(layer) for layer in removed_layers})
        _check_options(name, convs, num_classes, fc_widths, removed, norm_position, width_multiplier, input_size)
        if dropout_position not in DROPOUT_POSITIONS:
            raise InputError(
                f"{name}: dropout_position must be one of {list(DROPOUT_POSITIONS)}, got {dropout_position!r}"
            )
        if adaptive_pool is not None and adaptive_pool < 1:
            raise InputError(f"{name}: adaptive_pool must be >= 1 or None, got {adaptive_pool}")
        # Krizhevsky's LRN: b = a / (k + alpha * sum a^2)^beta with alpha=1e-4 over n=5 maps;
        # torch divides alpha by n, so alpha is given as n * 1e-4.
        lrn_options = {"size": 5, "alpha": 5e-4, "beta": 0.75, "k": 2.0, **(lrn or {})}

        def scaled(width: int, multiple: int = 1) -> int:
            if multiple == 1 or width_multiplier == 1:
                return max(1, round(width * width_multiplier))
            # A scaled-down grouped network keeps its groups: widths rounded to a multiple of them.
            return multiple * max(1, round(width * width_multiplier / multiple))

        layers: list[nn.Module] = []
        self.feature_sizes: dict[str, int] = {}  # spatial width after each stage, for tests and docs
        channels, size = in_channels, input_size
        kept = [(index, spec) for index, spec in enumerate(convs, start=1) if index not in removed]
        for position, (index, spec) in enumerate(kept):
            conv_name = f"conv{index}"
            following = kept[position + 1][1].groups if position + 1 < len(kept) else 1
            # A layer's maps are split over its own groups and are the input maps of the next layer's groups.
            out_channels = scaled(spec.out_channels, math.lcm(spec.groups, following))
            for maps, what in ((channels, "input"), (out_channels, "output")):
                if maps % spec.groups:
                    raise InputError(f"{name}: {conv_name}'s groups={spec.groups} must divide its {maps} {what} maps")
            if size + 2 * spec.padding < spec.kernel_size:
                raise InputError(
                    f"{name}: {conv_name} gets a {size}x{size} input, smaller than its "
                    f"{spec.kernel_size}x{spec.kernel_size} filter (input_size={input_size} is too small "
                    f"for this architecture; removed_layers={removed})"
                )
            layers += [
                nn.Conv2d(channels, out_channels, spec.kernel_size, spec.stride, spec.padding, groups=spec.groups),
                nn.ReLU(inplace=True),
            ]
            channels, size = out_channels, _conv_out(size, spec.kernel_size, spec.stride, spec.padding)
            self.feature_sizes[conv_name] = size
            norm = [nn.LocalResponseNorm(**lrn_options)] if spec.norm and local_response_norm else []
            if spec.pool:
                if size < POOL_KERNEL:
                    raise InputError(
                        f"{name}: pool{index} (after {conv_name}) gets a {size}x{size} map, smaller than its "
                        f"{POOL_KERNEL}x{POOL_KERNEL} window (input_size={input_size} is too small)"
                    )
                pool = nn.MaxPool2d(POOL_KERNEL, POOL_STRIDE, ceil_mode=pool_ceil_mode)
                size = _pool_out(size, pool_ceil_mode)
                self.feature_sizes[f"pool{index}"] = size
                layers += [pool, *norm] if norm_position == "after_pool" else [*norm, pool]
            else:
                layers += norm
        self.features = nn.Sequential(*layers)
        # No module (and no state-dict entry) unless asked for: the paper's networks keep their checkpoint keys.
        self.avgpool = nn.AdaptiveAvgPool2d(adaptive_pool) if adaptive_pool is not None else None
        if adaptive_pool is not None:
            size = adaptive_pool
        self.out_channels, self.out_size = channels, size

        dense: list[nn.Module] = []
        in_features = channels * size * size
        for layer, width in zip(DENSE_LAYERS, fc_widths):
            if layer in removed:
                continue
            linear, relu, drop = nn.Linear(in_features, scaled(width)), nn.ReLU(inplace=True), nn.Dropout(dropout)
            # Dropout on the outputs of fc6 and fc7, as in the paper (Caffe's relu -> drop order), by default.
            dense += [linear, relu, drop] if dropout_position == "after_relu" else [drop, linear, relu]
            in_features = scaled(width)
        dense.append(nn.Linear(in_features, num_classes))
        self.classifier = nn.Sequential(*dense)
        if init_std is not None:
            self.reset_parameters(init_std)
        if conv1_init_std is not None:
            if conv1_init_std <= 0:
                raise InputError(f"{name}: conv1_init_std must be > 0 or None, got {conv1_init_std}")
            first = self.features[0]
            assert isinstance(first, nn.Conv2d)  # features start with conv1 (it cannot be removed)
            nn.init.normal_(first.weight, 0.0, conv1_init_std)

    def reset_parameters(self, std: float) -> None:
        """The paper's initialisation: weights ~ N(0, std^2), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, std)
                assert module.bias is not None  # every layer is built with a bias
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if self.avgpool is not None:
            x = self.avgpool(x)
        return self.classifier(x.flatten(1))


def _check_options(
    name: str,
    convs: Sequence[ConvSpec],
    num_classes: int,
    fc_widths: Sequence[int],
    removed: Sequence[int],
    norm_position: str,
    width_multiplier: float,
    input_size: int,
) -> None:
    if len(convs) != len(CONV_LAYERS):
        raise InputError(f"{name}: expected {len(CONV_LAYERS)} conv layer specs, got {len(convs)}")
    if len(fc_widths) != len(DENSE_LAYERS):
        raise InputError(f"{name}: fc_widths must give the widths of fc6 and fc7 (2 numbers), got {list(fc_widths)}")
    bad = [layer for layer in removed if layer not in REMOVABLE_LAYERS]
    if bad:
        raise InputError(
            f"{name}: cannot remove layer(s) {bad}; removable layers are {list(REMOVABLE_LAYERS)} "
            "(conv3, conv4, fc6, fc7, as in the paper's Table 3)"
        )
    bad_groups = [spec.groups for spec in convs if spec.groups < 1]
    if bad_groups:
        raise InputError(f"{name}: every conv layer's groups must be >= 1, got {bad_groups}")
    if norm_position not in NORM_POSITIONS:
        raise InputError(f"{name}: norm_position must be one of {list(NORM_POSITIONS)}, got {norm_position!r}")
    if num_classes < 1:
        raise InputError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if width_multiplier <= 0:
        raise InputError(f"{name}: width_multiplier must be > 0, got {width_multiplier}")
    if input_size < 1:
        raise InputError(f"{name}: input_size must be >= 1, got {input_size}")
    for layer, width in zip(DENSE_LAYERS, fc_widths):
        if width < 1:
            raise InputError(f"{name}: fc{layer} width must be >= 1, got {width}")


def with_widths(convs: Sequence[ConvSpec], conv_widths: Sequence[int] | None) -> list[ConvSpec]:
    """Replace the number of maps of each conv layer (Table 3's "layers 3,4,5: 512,1024,512 maps")."""
    if conv_widths is None:
        return list(convs)
    if len(conv_widths) != len(convs):
        raise InputError(f"conv_widths must give {len(convs)} numbers (conv1-conv5), got {list(conv_widths)}")
    return [replace(spec, out_channels=int(width)) for spec, width in zip(convs, conv_widths)]

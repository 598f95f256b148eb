"""AlexNet (Krizhevsky et al. 2012): as one tower (`alexnet`: conv2, conv4 and conv5 dense instead of split over two
GPUs) and with the original's two groups in those layers (`alexnet_grouped`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from zf_lightning.models.convnet import ConvSpec, PaperConvNet, with_widths

# Padding 2 on conv1 gives the 55x55 maps of the paper from a 224x224 input (as torchvision does).
ALEXNET_CONVS = (
    ConvSpec(96, 11, stride=4, padding=2, pool=True, norm=True),
    ConvSpec(256, 5, padding=2, pool=True, norm=True),
    ConvSpec(384, 3, padding=1),
    ConvSpec(384, 3, padding=1),
    ConvSpec(256, 3, padding=1, pool=True),
)
# Krizhevsky et al.'s Fig. 2: conv2, conv4 and conv5 see only the maps of their own GPU; conv3 and the dense layers
# see both GPUs' maps.
GROUPED_LAYERS = (2, 4, 5)
TOWERS = 2


def alexnet(
    num_classes: int = 1000,
    *,
    conv_widths: Sequence[int] | None = None,
    norm_position: str = "before_pool",
    **options: Any,
) -> PaperConvNet:
    """AlexNet with response normalisation before pooling, as Krizhevsky et al.; options as `zfnet`."""
    convs = with_widths(ALEXNET_CONVS, conv_widths)
    return PaperConvNet(convs, num_classes, norm_position=norm_position, name="alexnet", **options)


def alexnet_grouped(
    num_classes: int = 1000,
    *,
    conv_widths: Sequence[int] | None = None,
    norm_position: str = "before_pool",
    **options: Any,
) -> PaperConvNet:
    """Krizhevsky et al.'s exact architecture: `alexnet` with conv2, conv4 and conv5 in two groups (60,965,224
    parameters at 1000 classes instead of 62,378,344); options as `zfnet`.

    One difference remains: response normalisation runs over all maps, so the windows at the boundary between
    the halves span both, where each GPU of the original normalised only its own maps. With `width_multiplier`,
    the widths are rounded to even numbers so that the groups still split them.
    """
    convs = [
        replace(spec, groups=TOWERS) if layer in GROUPED_LAYERS else spec
        for layer, spec in enumerate(with_widths(ALEXNET_CONVS, conv_widths), start=1)
    ]
    return PaperConvNet(convs, num_classes, norm_position=norm_position, name="alexnet_grouped", **options)

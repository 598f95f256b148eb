"""AlexNet (Krizhevsky et al. 2012) as one tower: conv2, conv4 and conv5 dense instead of split over two GPUs."""

from __future__ import annotations

from collections.abc import Sequence
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

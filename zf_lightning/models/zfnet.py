"""ZFNet: the network of Zeiler & Fergus 2014, Fig. 3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from zf_lightning.models.convnet import ConvSpec, PaperConvNet, with_widths

# conv1 is 7x7 stride 2 (AlexNet's 11x11 stride 4 aliased, section 4.1) and conv2 is stride 2.
ZFNET_CONVS = (
    ConvSpec(96, 7, stride=2, padding=1, pool=True, norm=True),
    ConvSpec(256, 5, stride=2, padding=0, pool=True, norm=True),
    ConvSpec(384, 3, padding=1),
    ConvSpec(384, 3, padding=1),
    ConvSpec(256, 3, padding=1, pool=True),
)


def zfnet(
    num_classes: int = 1000,
    *,
    conv_widths: Sequence[int] | None = None,
    norm_position: str = "after_pool",
    **options: Any,
) -> PaperConvNet:
    """ZFNet; with a 224x224 input its maps are 110, 55, 26, 13, 13, 13, 13 and 6 wide.

    Options (see `PaperConvNet`): `conv_widths` (maps of conv1-5), `fc_widths` (fc6, fc7),
    `removed_layers` (any of 3, 4, 6, 7), `local_response_norm`, `norm_position`, `width_multiplier`,
    `input_size`, `dropout`, `init_std`.
    """
    convs = with_widths(ZFNET_CONVS, conv_widths)
    return PaperConvNet(convs, num_classes, norm_position=norm_position, name="zfnet", **options)

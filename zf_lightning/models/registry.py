"""Networks by name, as configs refer to them (`net.arch`)."""

from __future__ import annotations

from typing import Any

from zf_lightning.models.alexnet import alexnet, alexnet_grouped
from zf_lightning.models.convnet import PaperConvNet
from zf_lightning.models.zfnet import zfnet
from zf_lightning.utils.errors import InputError

ARCHITECTURES = {"zfnet": zfnet, "alexnet": alexnet, "alexnet_grouped": alexnet_grouped}


def build_network(arch: str, **options: Any) -> PaperConvNet:
    """Build a network by name, e.g. `build_network("zfnet", num_classes=10, fc_widths=[2048, 2048])`."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown model architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**options)

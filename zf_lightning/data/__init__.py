"""Datamodules and datasets; each datamodule applies the paper's or torchvision's input preset.

The datamodules are imported on first use: the tools that only read image files (zf-prepare, zf-overlap) import
modules of this package without paying for Lightning (some 4 s on 2 cores), so that they refuse bad arguments at
once."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from zf_lightning.data.base import ImageClassificationDataModule
    from zf_lightning.data.datamodules import ImageNetDataModule, SyntheticDataModule

__all__ = ["ImageClassificationDataModule", "ImageNetDataModule", "SyntheticDataModule"]
_HOMES = {
    "ImageClassificationDataModule": "zf_lightning.data.base",
    "ImageNetDataModule": "zf_lightning.data.datamodules",
    "SyntheticDataModule": "zf_lightning.data.datamodules",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

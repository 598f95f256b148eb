"""Datamodules and datasets; each datamodule applies the paper's or torchvision's input preset."""

from zf_lightning.data.base import ImageClassificationDataModule
from zf_lightning.data.datamodules import ImageNetDataModule, SyntheticDataModule

__all__ = ["ImageClassificationDataModule", "ImageNetDataModule", "SyntheticDataModule"]

"""The network a command reads and the images it runs on: a zf-train checkpoint with its datamodule, or a network
trained elsewhere (`pretrained=torchvision|pytorchcv|module`) with its own preprocessing and class names."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from zf_lightning.utils.errors import InputError
from zf_lightning.utils.progress import track_images

if TYPE_CHECKING:
    from zf_lightning.data.base import ImageClassificationDataModule
    from zf_lightning.models import ImageClassifier


@dataclass
class NetworkSource:
    """A network in eval mode, how its inputs are made, and the data it was given."""

    net: nn.Module
    description: str  # for titles and summary.json: "zfnet (last.ckpt)", "torchvision resnet18 IMAGENET1K_V1"
    transform: Callable[[Any], torch.Tensor]  # an image -> the network's input
    display_transform: Callable[[Any], torch.Tensor]  # the same crop on the 0-1 scale, for figures
    class_names: list[str] | None
    num_classes: int
    resize_size: int
    crop_size: int
    preset: str  # "paper" (per-pixel mean image) or "torchvision" (mean/std): how boxes map into the crop
    datamodule: ImageClassificationDataModule
    checkpoint: str | None = None  # the zf-train checkpoint, None for a pretrained network
    model: ImageClassifier | None = None  # the LightningModule of a zf-train checkpoint

    def split_dataset(self, split: str, display: bool = False) -> Dataset:
        """Split `split` of the datamodule, centre crops, as this network's inputs (or as figures show them)."""
        if self.model is not None:  # the checkpoint's own datamodule transforms, exactly as before
            return self.datamodule.split_dataset(split, display=display)
        if split not in self.datamodule.stage_splits:
            raise InputError(f"split must be one of {list(self.datamodule.stage_splits)}, got {split!r}")
        transform = self.display_transform if display else self.transform
        return self.datamodule.make_dataset(self.datamodule.stage_splits[split], transform)

    def summary(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "network": self.description}


def network_source(cfg: DictConfig, ckpt_path: str | None = None) -> NetworkSource:
    """The network of `cfg`: `ckpt_path` (or cfg.ckpt_path), checked against cfg.data, or cfg.pretrained."""
    from zf_lightning.cli.common import load_checkpoint_with_data

    ckpt_path = ckpt_path if ckpt_path is not None else cfg.get("ckpt_path")
    if ckpt_path is not None:
        model, datamodule = load_checkpoint_with_data(ckpt_path, cfg.data)
        net = model.net.eval()
        return NetworkSource(
            net=net,
            description=f"{model.hparams['net'].get('arch', '?')} ({Path(str(ckpt_path)).name})",
            transform=datamodule.transforms()["val"],
            display_transform=datamodule.display_transform(),
            class_names=_dataset_class_names(datamodule),
            num_classes=int(datamodule.num_classes),
            resize_size=int(datamodule.resize_size),
            crop_size=int(datamodule.crop_size),
            preset=str(datamodule.preset),
            datamodule=datamodule,
            checkpoint=str(ckpt_path),
            model=model,
        )
    if cfg.get("pretrained") is None:
        raise InputError(
            "give a network: ckpt_path=PATH (a zf-train checkpoint) or pretrained=torchvision|pytorchcv|module"
        )
    from zf_lightning.models.pretrained import load_network

    spec = cast(dict, OmegaConf.to_container(cfg.pretrained, resolve=True))
    class_names = spec.pop("class_names", None)
    loaded = load_network(pretrained=spec)
    names = _class_names_from(class_names) if class_names is not None else loaded.class_names
    preprocessing = loaded.preprocessing
    return NetworkSource(
        net=loaded.net.eval(),
        description=loaded.source,
        transform=preprocessing.transform(),
        display_transform=preprocessing.display_transform(),
        class_names=list(names) if names is not None else None,
        num_classes=int(loaded.num_classes),
        resize_size=int(preprocessing.resize_size),
        crop_size=int(preprocessing.crop_size),
        preset="torchvision",
        datamodule=instantiate(cfg.data),
    )


def _class_names_from(source: list[str] | str) -> list[str]:
    from zf_lightning.data.user_images import load_mapping

    if isinstance(source, str):
        loaded = load_mapping(source, "pretrained.class_names")
        if isinstance(loaded, dict) and all(str(key).isdigit() for key in loaded):
            return [str(loaded[key]) for key in sorted(loaded, key=int)]
        raise InputError(f"pretrained.class_names={source!r}: expected a list of names, or a file of index -> name")
    return [str(name) for name in source]


def _dataset_class_names(datamodule: ImageClassificationDataModule) -> list[str] | None:
    try:
        classes = getattr(datamodule.make_dataset(datamodule.stage_splits["val"], None), "classes", None)
    except (AttributeError, FileNotFoundError, OSError, ValueError):
        return None
    return [str(name) for name in classes] if classes is not None else None


def indexed_batches(
    loader: Iterable[tuple[torch.Tensor, Any]], device: torch.device, total: int, what: str
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, dataset indices) per batch of a sequential loader, with a progress bar (images/s, time left)."""
    seen = 0
    for images, _ in track_images(loader, what, total):
        yield images.to(device), torch.arange(seen, seen + len(images))
        seen += len(images)

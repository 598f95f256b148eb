"""One LightningModule for every network of the paper, with the paper's training recipe."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from zf_lightning.models.registry import build_network

PAPER_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4}
PAPER_LR_SCHEDULER = {
    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "mode": "min",
    "factor": 0.1,
    "patience": 3,
    "monitor": "val/top1_err",
}


def _plain(value):
    """OmegaConf containers -> dicts and lists (checkpoints must unpickle with weights_only=True)."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


@torch.no_grad()
def renormalize_filters_(module: nn.Module, radius: float) -> None:
    """Rescale every conv filter whose RMS exceeds `radius` to RMS `radius` (paper, section 3).

    A filter is one output channel's weights (in_channels x kh x kw); filters below the radius are untouched.
    """
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            rms = conv.weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
            conv.weight.mul_((radius / rms).clamp(max=1.0))


def average_crop_probabilities(logits: torch.Tensor, num_crops: int) -> torch.Tensor:
    """(B * num_crops, K) logits -> (B, K) softmax probabilities averaged over the crops of each image."""
    return logits.softmax(dim=-1).unflatten(0, (-1, num_crops)).mean(dim=1)


class ImageClassifier(L.LightningModule):
    """Trains any network of `zf_lightning.models` with SGD, plateau annealing and filter renormalisation.

    Args:
        net: keyword arguments of `build_network`, e.g. `{"arch": "zfnet", "num_classes": 1000}`.
        optimizer: a Hydra `_target_` dict; `weight_decay` applies to weights only, not biases.
        lr_scheduler: a Hydra `_target_` dict with a `monitor` key (plateau schedulers), or None for a constant lr.
        filter_rms_radius: radius of the filter RMS renormalisation after each step; None turns it off.

    Batches are `(images, labels)`; at test time images may be `(B, crops, C, H, W)`, and the crops of
    each image go through the network as one batch and their softmax outputs are averaged.
    All hyperparameters are plain containers so that checkpoints load with `torch.load(weights_only=True)`.
    """

    def __init__(
        self,
        net: dict[str, Any],
        optimizer: dict[str, Any] = PAPER_OPTIMIZER,  # copied, never mutated
        lr_scheduler: dict[str, Any] | None = PAPER_LR_SCHEDULER,
        filter_rms_radius: float | None = 0.1,
    ) -> None:
        super().__init__()
        net, optimizer, lr_scheduler = (_plain(x) for x in (net, optimizer, lr_scheduler))
        optimizer, lr_scheduler = dict(optimizer), dict(lr_scheduler) if lr_scheduler else None
        self.save_hyperparameters({"net": net, "optimizer": optimizer, "lr_scheduler": lr_scheduler, "filter_rms_radius": filter_rms_radius})
        self.net = build_network(**net)
        num_classes = self.net.classifier[-1].out_features
        topk = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        topk["top5"] = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro")
        # Separate collections per stage: their running counts must never mix.
        self.train_metrics = MetricCollection(topk).clone(prefix="train/")
        self.val_metrics = MetricCollection(topk).clone(prefix="val/")
        self.test_metrics = MetricCollection(topk).clone(prefix="test/")

    def metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities; for (B, crops, C, H, W) input, the average over each image's crops."""
        if images.ndim == 5:
            return average_crop_probabilities(self.net(images.flatten(0, 1)), images.shape[1])
        return self.net(images).softmax(dim=-1)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.net(images)
        loss = F.cross_entropy(logits, labels)
        self.train_metrics.update(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate(self, stage: str, batch) -> None:
        images, labels = batch
        if images.ndim == 5:
            probabilities = self.predict_proba(images)
            loss = F.nll_loss(probabilities.clamp_min(1e-12).log(), labels)
            self.metrics(stage).update(probabilities, labels)
        else:
            logits = self.net(images)
            loss = F.cross_entropy(logits, labels)
            self.metrics(stage).update(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(labels))

    def validation_step(self, batch, batch_idx):
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx):
        self._evaluate("test", batch)

    def _log_errors(self, stage: str) -> None:
        # The paper reports errors in percent; torchmetrics syncs the counts across ranks in compute().
        for name, accuracy in self.metrics(stage).compute().items():
            self.log(f"{name}_err", 100.0 * (1.0 - accuracy), prog_bar=stage == "val")
        self.metrics(stage).reset()

    def on_train_epoch_end(self) -> None:
        self._log_errors("train")

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val")

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.hparams.filter_rms_radius is not None:
            renormalize_filters_(self.net, self.hparams.filter_rms_radius)

    def configure_optimizers(self):
        config = dict(self.hparams.optimizer)
        weight_decay = config.pop("weight_decay", 0.0)
        weights = [p for n, p in self.net.named_parameters() if not n.endswith("bias")]
        biases = [p for n, p in self.net.named_parameters() if n.endswith("bias")]
        groups = [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]
        optimizer = instantiate(config, _partial_=True)(groups)  # partial: Hydra would wrap the tensors in a config
        if not self.hparams.lr_scheduler:
            return optimizer
        scheduler_config = dict(self.hparams.lr_scheduler)
        monitor = scheduler_config.pop("monitor", "val/top1_err")
        scheduler = instantiate(scheduler_config, _partial_=True)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": "epoch"}}

"""One LightningModule for every network of the paper, with the paper's training recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities.types import LRSchedulerTypeUnion, OptimizerLRScheduler
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from zf_lightning.models.finite_check import DeferredFiniteCheck
from zf_lightning.models.pretrained import load_transfer_weights, network_from_hparams
from zf_lightning.utils.errors import InputError

PAPER_OPTIMIZER = {"_target_": "torch.optim.SGD", "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4}
PAPER_LR_SCHEDULER = {
    "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
    "mode": "min",
    "factor": 0.1,
    "patience": 3,
    "monitor": "val/top1_err",
}


def _plain(value: Any) -> Any:
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


TRANSFER_MODES = ("scratch", "pretrained", "finetune")
TASKS = ("multiclass", "multilabel_softmax", "multilabel")
TRAIN_METRIC_STATES = "train_metric_states"  # checkpoint keys
CALLBACK_METRICS = "callback_metrics"


def _synced_state(metric: Metric) -> dict[str, torch.Tensor]:
    """A torchmetrics metric's states, reduced over ranks (a no-op on one process), on the CPU."""
    with metric.sync_context(should_unsync=True):
        # The training metrics' states are tensors; torchmetrics types them as tensors or lists.
        return {attr: cast(torch.Tensor, value).detach().cpu().clone() for attr, value in metric.metric_state.items()}


def average_crop_probabilities(logits: torch.Tensor, num_crops: int, sigmoid: bool = False) -> torch.Tensor:
    """(B * num_crops, K) logits -> (B, K) probabilities (softmax, or a sigmoid per label) averaged over each
    image's crops."""
    probabilities = logits.sigmoid() if sigmoid else logits.softmax(dim=-1)
    return probabilities.unflatten(0, (-1, num_crops)).mean(dim=1)


def label_distribution(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot targets (1 present, 0 absent, -1 ignored) as a distribution over the present labels (each 1/n of
    the image's n), and which images have any label present."""
    present = (targets == 1).to(torch.float32)
    count = present.sum(dim=1, keepdim=True)
    return present / count.clamp_min(1), count[:, 0] > 0


def softmax_multilabel_loss(scores: torch.Tensor, targets: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Cross-entropy of one softmax over the classes against the image's present labels, weighted equally: an image
    with n labels counts as n images of one label each, of weight 1/n (the paper's single exclusive softmax on
    multi-label VOC images). Images with no label present (only "difficult" objects) are left out."""
    distribution, labelled = label_distribution(targets)
    log_p = scores.clamp_min(1e-12).log() if probabilities else scores.float().log_softmax(dim=-1)
    losses = -(distribution * log_p).sum(dim=1)
    return (losses * labelled).sum() / labelled.sum().clamp_min(1)


def masked_multilabel_loss(scores: torch.Tensor, targets: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
    """Binary cross-entropy per label from logits (or probabilities), leaving out targets of -1 (VOC's
    difficult-only: neither present nor absent)."""
    known = targets >= 0
    present = targets.clamp_min(0).to(scores.dtype)
    if probabilities:
        losses = F.binary_cross_entropy(scores.clamp(1e-7, 1 - 1e-7), present, reduction="none")
    else:
        losses = F.binary_cross_entropy_with_logits(scores, present, reduction="none")
    return (losses * known).sum() / known.sum().clamp_min(1)


def load_pretrained_weights(net: nn.Module, checkpoint: str | Path) -> list[str]:
    """Copy every weight of a zf-train checkpoint's network into `net` except its last (class) layer.

    Returns the names left at their initial values. Shapes must match the checkpoint's: say which differ.
    """
    from zf_lightning.utils.io import load_checkpoint

    path = Path(checkpoint)
    state = load_checkpoint(path, "model.transfer.checkpoint")["state_dict"]
    weights = {name[len("net.") :]: value for name, value in state.items() if name.startswith("net.")}
    last = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)][-1]
    own = net.state_dict()
    kept = {name: value for name, value in weights.items() if not name.startswith(f"{last}.")}
    missing = sorted(set(own) - set(kept) - {f"{last}.weight", f"{last}.bias"})
    mismatched = [
        f"{name}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}"
        for name, value in kept.items()
        if name in own and value.shape != own[name].shape
    ]
    unexpected = sorted(set(kept) - set(own))
    if missing or mismatched or unexpected:
        raise InputError(
            f"transfer.checkpoint={str(path)!r} does not fit the configured network "
            "(model=...: use the variant it was trained as): "
            f"missing {missing}, shape mismatches {mismatched}, unexpected {unexpected}"
        )
    net.load_state_dict(kept, strict=False)
    return [f"{last}.weight", f"{last}.bias"]


class ImageClassifier(L.LightningModule):
    """Trains any network of `zf_lightning.models` with SGD, plateau annealing and filter renormalisation.

    Args:
        net: keyword arguments of `build_network`, e.g. `{"arch": "zfnet", "num_classes": 1000}`.
        optimizer: a Hydra `_target_` dict; `weight_decay` applies to weights only, not biases.
        lr_scheduler: a Hydra `_target_` dict with a `monitor` key (plateau schedulers), or None for a constant lr.
        filter_rms_radius: radius of the filter RMS renormalisation after each step; None turns it off.
        transfer: `{"mode": "scratch" | "pretrained" | "finetune", "checkpoint": PATH, "pretrained": SPEC}`.
            "pretrained" (the paper's transfer): the starting network's layers 1-7 are loaded and kept fixed (eval
            mode, no gradients), and a new last layer is trained; "finetune": loaded, then every layer trains;
            "scratch" (default): random initial weights. The starting network is a zf-train checkpoint
            (`checkpoint`) or a network trained elsewhere (`pretrained`: a spec of `models.pretrained.load_network`
            whose network has the paper's layout; the network trained is then its architecture, with a new class
            layer of `net.num_classes` outputs). Weights are loaded when fitting starts, so a checkpoint of this
            module later loads without the starting network's weights.
        task: "multiclass" (softmax, top-1/top-5 and mean per-class accuracy); for multi-label data (targets
            1 / 0 / -1 for present / absent / ignored, VOC average precision per class) "multilabel_softmax" (the
            paper's VOC head: one softmax over the classes, each image's present labels as the target
            distribution, `softmax_multilabel_loss`) or "multilabel" (a sigmoid and binary cross-entropy per label).
        channels_last: keep the network's weights and the batches in channels-last memory layout (faster
            convolutions on GPUs with tensor cores, with `precision=bf16-mixed`).
        compile: `torch.compile` the network (not this module) when the Trainer sets up: True, or a dict of
            `torch.compile` options such as `{"mode": "max-autotune"}`.

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
        transfer: dict[str, Any] | None = None,
        task: str = "multiclass",
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        net, optimizer, lr_scheduler, transfer = (_plain(x) for x in (net, optimizer, lr_scheduler, transfer))
        optimizer, lr_scheduler = dict(optimizer), dict(lr_scheduler) if lr_scheduler else None
        transfer = {"mode": "scratch", "checkpoint": None, "pretrained": None, **(transfer or {})}
        if transfer["mode"] not in TRANSFER_MODES:
            raise InputError(f"model.transfer.mode must be one of {list(TRANSFER_MODES)}, got {transfer['mode']!r}")
        if transfer["checkpoint"] and transfer["pretrained"]:
            raise InputError("model.transfer: give one starting network, checkpoint=PATH or pretrained=..., not both")
        if transfer["mode"] != "scratch" and not (transfer["checkpoint"] or transfer["pretrained"]):
            raise InputError(
                f"model.transfer.mode={transfer['mode']!r} needs model.transfer.checkpoint=PATH "
                "(an ImageNet-trained zf-train checkpoint) or a network trained elsewhere (pretrained=...)"
            )
        if task not in TASKS:
            raise InputError(f"model.task must be one of {list(TASKS)}, got {task!r}")
        self.save_hyperparameters(
            {
                "net": net,
                "optimizer": optimizer,
                "lr_scheduler": lr_scheduler,
                "filter_rms_radius": filter_rms_radius,
                "transfer": transfer,
                "task": task,
                "channels_last": channels_last,
                "compile": _plain(compile),
            }
        )
        self.net = network_from_hparams({"net": net, "transfer": transfer})
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)
        self.multilabel = task != "multiclass"  # multi-hot targets, average precision
        self.sigmoid = task == "multilabel"  # a sigmoid per label, else one softmax over the classes
        last = self.net.classifier[-1]
        assert isinstance(last, nn.Linear)  # PaperConvNet ends with its class layer
        num_classes = last.out_features
        metrics: dict[str, Metric | MetricCollection]  # the type MetricCollection takes
        if self.multilabel:
            from zf_lightning.models.metrics import VOCAveragePrecision

            metrics = {"ap": VOCAveragePrecision(num_classes)}
        else:
            metrics = {
                "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
                # Caltech's protocol: the mean of per-class accuracies.
                "mean_class": MulticlassAccuracy(num_classes, top_k=1, average="macro"),
            }
        # Separate collections per stage: their running counts must never mix.
        self.train_metrics = (
            MetricCollection(metrics).clone(prefix="train/") if not self.multilabel else MetricCollection({})
        )
        # The epoch's mean training loss (weighted by batch size, as Lightning's on_epoch mean): a metric, so that
        # its running sums go into checkpoints with the others. No NaN check: it would read the loss back every step.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_metrics = MetricCollection(metrics).clone(prefix="val/")
        self.test_metrics = MetricCollection(metrics).clone(prefix="test/")
        self.finite_check = DeferredFiniteCheck()
        self.restored_metrics: dict[str, float] = {}  # the latest logged metrics of the checkpoint resumed from

    def configure_model(self) -> None:
        # In place (nn.Module.compile): the parameter names, hence checkpoints, stay those of the plain network.
        if self.hparams["compile"] and not getattr(self, "_compiled", False):
            options = self.hparams["compile"] if isinstance(self.hparams["compile"], dict) else {}
            self.net.compile(**options)
            self._compiled = True

    @property
    def frozen(self) -> bool:
        return self.hparams["transfer"]["mode"] == "pretrained"

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.net.named_parameters() if p.requires_grad]

    def setup(self, stage: str) -> None:
        # Before Lightning restores a resumed run's own checkpoint, which then overrides these weights.
        transfer = self.hparams["transfer"]
        if stage == "fit" and transfer["mode"] != "scratch":
            if transfer.get("pretrained"):
                fresh = load_transfer_weights(self.net, transfer["pretrained"])
            else:
                fresh = load_pretrained_weights(self.net, transfer["checkpoint"])
            if self.frozen:
                for name, parameter in self.net.named_parameters():
                    parameter.requires_grad_(name in fresh)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        if mode and self.frozen:  # fixed layers 1-7: no dropout noise in the features the new layer learns from
            self.net.features.eval()
            self.net.classifier[:-1].eval()
        return self

    def metrics(self, stage: str) -> MetricCollection:
        return getattr(self, f"{stage}_metrics")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.laid_out(images))

    def laid_out(self, images: torch.Tensor) -> torch.Tensor:
        """Batches in the network's memory layout (a no-op by default: `contiguous` returns the tensor itself)."""
        return images.contiguous(memory_format=self.memory_format)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (label probabilities when multilabel); for (B, crops, C, H, W) input, the average
        over each image's crops."""
        if images.ndim == 5:
            crops = self.laid_out(images.flatten(0, 1))  # one batch of B x crops
            return average_crop_probabilities(self.net(crops), images.shape[1], self.sigmoid)
        logits = self(images)
        return logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, probabilities: bool = False) -> torch.Tensor:
        """The task's loss, from logits (or, with `probabilities`, from the crops' averaged probabilities)."""
        if self.sigmoid:
            return masked_multilabel_loss(logits, labels, probabilities=probabilities)
        if self.multilabel:
            return softmax_multilabel_loss(logits, labels, probabilities=probabilities)
        if probabilities:
            return F.nll_loss(logits.clamp_min(1e-12).log(), labels)
        return F.cross_entropy(logits, labels)

    # None: check the loss at once on a CPU, deferred on other devices (`DeferredFiniteCheck`); True/False forces it.
    defer_finite_check: bool | None = None

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.finite_check.raise_finished()  # earlier steps' flags that have reached the host
        images, labels = batch
        logits = self(images)
        loss = self.loss(logits, labels)
        self._check_finite(loss, batch_idx)
        if not self.multilabel:
            self.train_metrics.update(logits, labels)
        self.train_loss.update(loss.detach(), weight=len(labels))
        # Not prog_bar: Lightning would read it back every step, a GPU sync; the bar reads it when it redraws.
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=len(labels))
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop a run whose loss is not finite, before the optimiser writes NaN into the weights (and a checkpoint);
        under DDP every rank stops, none is left waiting in an all-reduce."""
        distributed = self._trainer is not None and self.trainer.world_size > 1
        step, epoch, value = (
            self.global_step,
            self.current_epoch,
            loss.detach(),
        )  # detached: a queued message keeps no graph

        def message() -> str:
            where = f"; this rank's: {value.item()}" if distributed else ""
            return (
                f"non-finite training loss ({'on a rank' if where else value.item()}{where}) at global step {step} "
                f"(epoch {epoch}, batch {batch_idx}); the checkpoints written before it are kept"
            )

        defer = self.defer_finite_check if self.defer_finite_check is not None else loss.device.type != "cpu"
        if not defer:  # reading a CPU tensor costs nothing
            finite = bool(torch.isfinite(loss))
            if distributed:
                finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
            if not finite:
                raise FloatingPointError(message())
            return
        flag = torch.isfinite(loss.detach()).to(torch.int32)
        if distributed:  # torch.distributed directly: Lightning's reduce adds a barrier, which waits for the device
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        self.finite_check.push(flag.bool(), message)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        self.finite_check.guard(self.parameters())

    def on_validation_model_eval(self) -> None:
        self.finite_check.raise_finished(block=True)  # before validating (and checkpointing) weights of a bad step
        super().on_validation_model_eval()

    def on_train_epoch_end(self) -> None:
        """The epoch's training metrics go to the loggers and the plateau schedule takes its step here, before the
        epoch's checkpoints (written by the callbacks after this hook): Lightning would do both after them, and a
        run resumed from such a checkpoint would never do them."""
        self.finite_check.raise_finished(block=True)
        values = {"train/loss_epoch": self.train_loss.compute(), **self._errors("train")}
        self.train_loss.reset()
        self.log_dict(values, logger=False)  # callback_metrics (summary.json); the loggers get them now, below
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped - 1  # the step Lightning logs epoch metrics at
        row = {name: float(value) for name, value in values.items()} | {"epoch": self.current_epoch}
        for logger in self.loggers:
            logger.log_metrics(row, step=step)
            logger.save()
        self._step_epoch_scheduler()

    def _step_epoch_scheduler(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            monitor = self.trainer.lr_scheduler_configs[0].monitor
            value = self.trainer.callback_metrics.get(monitor) if monitor is not None else None
            if value is None:
                raise InputError(
                    f"model.lr_scheduler.monitor={monitor!r} was not logged by the end of epoch "
                    f"{self.current_epoch + 1}; logged: {sorted(self.trainer.callback_metrics)}"
                )
            scheduler.step(value)
        else:
            assert not isinstance(scheduler, list)  # configure_optimizers gives one scheduler
            scheduler.step()

    def lr_scheduler_step(self, scheduler: LRSchedulerTypeUnion, metric: Any | None) -> None:
        """Lightning's own step of the epoch scheduler, after the epoch's checkpoints: stepped in
        `on_train_epoch_end` instead."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.finite_check.raise_finished(block=True)
        # The running sums of the epoch's training metrics, summed over ranks: a run resumed mid-epoch continues
        # them, so that its epoch metrics are the uninterrupted run's.
        checkpoint[TRAIN_METRIC_STATES] = {
            name: _synced_state(metric)
            for name, metric in [*self.train_metrics.items(keep_base=True), ("loss", self.train_loss)]
        }
        # The latest value of every logged metric: a run resumed from here reports them as its own until it logs
        # newer ones (`restored_metrics`), also when nothing was left to train.
        checkpoint[CALLBACK_METRICS] = self.latest_metrics()

    def latest_metrics(self) -> dict[str, float]:
        """The latest value of every metric logged in training, also of those logged before a resume."""
        return {
            **self.restored_metrics,
            **{name: float(value) for name, value in self.trainer.callback_metrics.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restored_metrics = checkpoint.get(CALLBACK_METRICS, {})
        states = checkpoint.get(TRAIN_METRIC_STATES)
        if states is None:
            return
        metrics = dict([*self.train_metrics.items(keep_base=True), ("loss", self.train_loss)])
        rank = self.trainer.global_rank if self._trainer is not None else 0
        for name, state in states.items():
            metric = metrics[name]
            metric.reset()
            if rank == 0:  # the ranks' sums were added up: one rank carries them, the others start from zero
                for attr, value in state.items():
                    setattr(metric, attr, value.to(getattr(metric, attr).device))

    def on_train_end(self) -> None:
        self.finite_check.raise_finished(block=True)

    def _evaluate(self, stage: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, labels = batch
        if images.ndim == 5:
            probabilities = self.predict_proba(images)
            loss = self.loss(probabilities, labels, probabilities=True)
            self.metrics(stage).update(probabilities, labels)
        else:
            logits = self(images)
            loss = self.loss(logits, labels)
            self.metrics(stage).update(logits, labels)
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(labels))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _errors(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's metrics, as the paper reports them (errors, mean per-class accuracy and AP in percent), and
        the running counts reset; torchmetrics syncs the counts across ranks in compute()."""
        if not len(self.metrics(stage)):
            return {}
        values = {}
        for name, value in self.metrics(stage).compute().items():
            if name.endswith("/ap"):
                values[f"{stage}/mAP"] = 100.0 * value.nanmean()
                values.update({f"{stage}/ap_class{index:02d}": 100.0 * ap for index, ap in enumerate(value)})
            elif name.endswith("/mean_class"):
                values[f"{name}_acc"] = 100.0 * value
            else:
                values[f"{name}_err"] = 100.0 * (1.0 - value)
        self.metrics(stage).reset()
        return values

    def _log_errors(self, stage: str) -> None:
        for name, value in self._errors(stage).items():
            self.log(name, value, prog_bar=stage == "val" and "/ap_class" not in name)

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val")

    def on_test_epoch_end(self) -> None:
        self._log_errors("test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.hparams["filter_rms_radius"] is not None and not self.frozen:  # fixed filters stay as loaded
            renormalize_filters_(self.net, self.hparams["filter_rms_radius"])

    def configure_optimizers(self) -> OptimizerLRScheduler:
        config = dict(self.hparams["optimizer"])
        weight_decay = config.pop("weight_decay", 0.0)
        trainable = self.trainable_parameters()  # the new last layer only, when pretrained layers are fixed
        weights = [p for n, p in trainable if not n.endswith("bias")]
        biases = [p for n, p in trainable if n.endswith("bias")]
        groups = [{"params": weights, "weight_decay": weight_decay}, {"params": biases, "weight_decay": 0.0}]
        optimizer = instantiate(config, _partial_=True)(groups)  # partial: Hydra would wrap the tensors in a config
        if not self.hparams["lr_scheduler"]:
            return optimizer
        scheduler_config = dict(self.hparams["lr_scheduler"])
        monitor = scheduler_config.pop("monitor", "val/top1_err")
        scheduler = instantiate(scheduler_config, _partial_=True)(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": "epoch"},
        }

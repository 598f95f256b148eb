"""zf-eval: evaluate a checkpoint on a datamodule's test split (10-crop by default for ImageNet-style data), or a
pretrained network (`pretrained=...`) with its own preprocessing, one centre crop, as such networks are published."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from zf_lightning.cli.common import (
    finish_loggers,
    instantiate_loggers,
    load_checkpoint_with_data,
    log_config,
    metrics_as_floats,
    output_dir_of,
    run_app,
    run_summary,
)
from zf_lightning.config import config_dir
from zf_lightning.config.checker import validate_config
from zf_lightning.utils.errors import MissingInputError
from zf_lightning.utils.smoke import mark_smoke_run


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint on the data's test split; the metrics go to summary.json and the loggers."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    mark_smoke_run(cfg)  # synthetic data or debug=smoke: group <group>-smoke, before summary.json and loggers
    if cfg.get("ckpt_path") is None:
        return evaluate_pretrained(cfg)
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise MissingInputError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    output_dir = output_dir_of(cfg)

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        model, datamodule = load_checkpoint_with_data(ckpt_path, cfg.data)
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        trainer = instantiate(cfg.trainer, logger=loggers or False)
        log_config(trainer.loggers, cfg, output_dir)
        try:
            trainer.test(model, datamodule=datamodule)
        finally:
            finish_loggers(trainer.loggers)
        test = {k: v for k, v in metrics_as_floats(trainer.callback_metrics).items() if k.startswith("test/")}
        summary.update(
            {"checkpoint": str(ckpt_path), "ten_crop": bool(getattr(datamodule, "ten_crop_test", False)), "test": test}
        )

    return summary


def evaluate_pretrained(cfg: DictConfig) -> dict[str, Any]:
    """Top-1/top-5 error of a pretrained network on the data's test split, centre crops of its own preprocessing."""
    import torch
    from torch.utils.data import DataLoader
    from torchmetrics.classification import MulticlassAccuracy

    from zf_lightning.cli.common import resolve_device
    from zf_lightning.cli.sources import network_source
    from zf_lightning.utils.errors import InputError
    from zf_lightning.utils.progress import track_images

    output_dir = output_dir_of(cfg)
    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        source = network_source(cfg)
        if source.num_classes != source.datamodule.num_classes:
            raise InputError(
                f"{source.description} has {source.num_classes} classes but data.num_classes="
                f"{source.datamodule.num_classes}: evaluate it on data with its classes"
            )
        device = resolve_device(cfg.get("device", "auto"))
        net = source.net.to(device).eval()
        dataset = source.split_dataset("test")
        loader = DataLoader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers)
        metrics = {
            k: MulticlassAccuracy(source.num_classes, top_k=k, average="micro").to(device)
            for k in (1, min(5, source.num_classes))
        }
        loss, count = 0.0, 0
        with torch.inference_mode():
            for images, labels in track_images(loader, "zf-eval: testing", len(dataset)):  # type: ignore[arg-type]
                logits = net(images.to(device))
                labels = labels.to(device)
                loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
                count += len(labels)
                for metric in metrics.values():
                    metric.update(logits, labels)
        test = {"test/loss": loss / max(count, 1)}
        test.update({f"test/top{k}_err": 100.0 * (1.0 - float(metric.compute())) for k, metric in metrics.items()})
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        log_config(loggers, cfg, output_dir)
        for logger in loggers:
            logger.log_metrics(test, step=0)
        finish_loggers(loggers)
        summary.update({**source.summary(), "ten_crop": False, "num_images": count, "test": test})
    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    run_app(cfg, evaluate, "zf-eval")


if __name__ == "__main__":
    main()

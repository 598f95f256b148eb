"""zf-eval: evaluate a checkpoint on a datamodule's test split (10-crop by default for ImageNet-style data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from zf_lightning.cli import config_dir
from zf_lightning.cli.common import instantiate_loggers, log_config, metrics_as_floats, output_dir_of, run_with_summary
from zf_lightning.models import ImageClassifier


def check_compatible(model: ImageClassifier, datamodule, ckpt_path: Path) -> None:
    """The data must have the checkpoint's classes and input size; say which differs."""
    net = model.hparams.net
    if net.get("num_classes") != datamodule.num_classes:
        raise ValueError(
            f"checkpoint {ckpt_path} has {net.get('num_classes')} classes but data.num_classes={datamodule.num_classes}"
        )
    if net.get("input_size") != datamodule.crop_size:
        raise ValueError(
            f"checkpoint {ckpt_path} was built for {net.get('input_size')}px inputs but data.crop_size={datamodule.crop_size}"
        )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    ckpt_path = Path(cfg.ckpt_path)
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(ckpt_path)!r}: no such checkpoint file")
    output_dir = output_dir_of(cfg)

    def body() -> dict[str, Any]:
        L.seed_everything(cfg.seed, workers=True)
        model = ImageClassifier.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
        datamodule = instantiate(cfg.data)
        check_compatible(model, datamodule, ckpt_path)
        # The training run's mean image, so inputs are normalised exactly as the model was trained.
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__, {}))
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        trainer = instantiate(cfg.trainer, logger=loggers or False)
        log_config(trainer.loggers, cfg, output_dir)
        trainer.test(model, datamodule=datamodule)
        test = {k: v for k, v in metrics_as_floats(trainer.callback_metrics).items() if k.startswith("test/")}
        return {"checkpoint": str(ckpt_path), "ten_crop": bool(getattr(datamodule, "ten_crop_test", False)), "test": test}

    return run_with_summary(cfg, body)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()

"""zf-eval: evaluate a checkpoint on a datamodule's test split (10-crop by default for ImageNet-style data)."""

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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test a checkpoint on the data's test split; the metrics go to summary.json and the loggers."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    run_app(cfg, evaluate, "zf-eval")


if __name__ == "__main__":
    main()

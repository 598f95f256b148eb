"""zf-train: train a model from the composed Hydra config; `zf-train -m ...` launches a multirun."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from zf_lightning.cli import config_dir
from zf_lightning.cli.schema import validate_config
from zf_lightning.data.image_files import summarize_bad_images
from zf_lightning.utils.io import check_checkpoint
from zf_lightning.cli.common import (
    SUMMARY_FILE,
    finish_loggers,
    instantiate_group,
    instantiate_loggers,
    log_config,
    metrics_as_floats,
    output_dir_of,
    run_with_summary,
)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
log = logging.getLogger(__name__)


def requeued() -> bool:
    """Whether SLURM restarted this job (a requeue after preemption or the time limit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`ckpt_path=last` means this run directory's last checkpoint; it must exist. A requeued SLURM job
    continues from its own last checkpoint when it has one."""
    if ckpt_path is None and requeued() and (output_dir / LAST_CHECKPOINT).is_file():
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    path = output_dir / LAST_CHECKPOINT if ckpt_path == "last" else Path(ckpt_path)
    if not path.is_file():
        hint = " (ckpt_path=last resumes the run in hydra.run.dir=<its output dir>)" if ckpt_path == "last" else ""
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}{hint}")
    return str(check_checkpoint(path))  # a truncated file fails here, not deep inside torch


def refuse_to_overwrite(output_dir: Path) -> None:
    """A fresh run never writes into the directory of an earlier run."""
    earlier = [name for name in ("checkpoints", SUMMARY_FILE) if (output_dir / name).exists()]
    if earlier:
        raise FileExistsError(
            f"{output_dir} already holds a run ({', '.join(earlier)}); resume it with ckpt_path=last "
            "or leave hydra.run.dir to its default to start a new one"
        )


def refuse_script_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """Lightning's `strategy=ddp` starts ranks 1..N-1 by re-running this script's command line; in a Hydra
    multirun that command line is the whole sweep, so rank 1 would run a sweep of its own (another sweep dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    strategy = trainer.strategy
    relaunch = isinstance(strategy.launcher, _SubprocessScriptLauncher) and not strategy.cluster_environment.creates_processes_externally
    if multirun and relaunch:
        raise RuntimeError(
            f"{type(strategy).__name__} (trainer.strategy=ddp) would start the other ranks by re-running the command line, "
            "which in a multirun (-m) is the whole sweep. In a multirun let SLURM start one process per device "
            "(hydra/launcher=slurm); on one machine, run each point of the sweep as a run of its own (without -m)"
        )


def log_to_a_file_per_rank() -> None:
    """Under DDP every rank runs this job with Hydra's log file: ranks other than 0 write `<name>.rank<N>.log`
    beside it, so that the run's log is rank 0's alone and another rank's lines can still be found."""
    from lightning.pytorch.utilities import rank_zero_only

    rank = rank_zero_only.rank
    log.info("process rank %d", rank)  # before the switch: the shared log names every rank that joined
    if not rank:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            path = Path(handler.baseFilename)
            handler.acquire()
            try:
                handler.close()  # reopened at the next record, under the new name
                handler.baseFilename = str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))
            finally:
                handler.release()
    log.info("process rank %d logs here", rank)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test the model of `cfg`; returns (and writes to summary.json) the metrics."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    log_to_a_file_per_rank()
    output_dir = output_dir_of(cfg)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is None:
        refuse_to_overwrite(output_dir)

    def body() -> dict[str, Any]:
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        callbacks = instantiate_group(cfg.get("callbacks"))
        loggers = instantiate_loggers(cfg, output_dir, resume=ckpt_path is not None)
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        refuse_script_relaunch_in_multirun(trainer)
        log_config(trainer.loggers, cfg, output_dir)

        result: dict[str, Any] = {}
        status, error = "failed", None
        try:
            if cfg.get("train", True):
                trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                result["train"] = metrics_as_floats(trainer.callback_metrics)
                result["epochs"] = trainer.current_epoch
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None else ""
            if best:
                result["best"] = {"checkpoint": best}
                if checkpoint.monitor is not None:  # None: the last checkpoint, nothing selected
                    result["best"][checkpoint.monitor] = float(checkpoint.best_model_score)
            if cfg.get("test", True):
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
                result["test"] = {k: v for k, v in metrics_as_floats(trainer.callback_metrics).items() if k.startswith("test/")}
            # data.batch_size is global: each of the world_size processes loads per_device_batch_size of it
            result["world_size"] = trainer.world_size
            result["per_device_batch_size"] = datamodule.per_device_batch_size
            result["bad_images"] = summarize_bad_images(getattr(datamodule, "bad_image_log", None) or output_dir / "bad_images.jsonl")
            status = "success"
        except BaseException as raised:
            error = raised
            raise
        finally:
            finish_loggers(trainer.loggers, status, error)
        return result

    return run_with_summary(cfg, body)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = train(cfg)
    # Returned for Hydra sweepers that optimise a metric.
    return summary.get("best", {}).get("val/top5_err")


if __name__ == "__main__":
    main()

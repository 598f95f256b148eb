"""zf-train: train a model from the composed Hydra config; `zf-train -m ...` launches a multirun."""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from zf_lightning.callbacks.fault_tolerance import CheckpointOnSignal
from zf_lightning.callbacks.loggers import LOGGED_ROWS
from zf_lightning.cli.common import (
    SUMMARY_FILE,
    finish_loggers,
    instantiate_group,
    instantiate_loggers,
    log_checkpoint_artifact,
    log_config,
    metrics_as_floats,
    output_dir_of,
    run_app,
    run_summary,
)
from zf_lightning.config import config_dir
from zf_lightning.config.checker import validate_config
from zf_lightning.data.image_files import summarize_bad_images
from zf_lightning.utils.errors import ExistingOutputError, MissingInputError
from zf_lightning.utils.io import check_checkpoint
from zf_lightning.utils.smoke import mark_smoke_run

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
log = logging.getLogger(__name__)


def requeued() -> bool:
    """Whether SLURM restarted this job (a requeue after preemption or the time limit)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


def newest_checkpoint(output_dir: Path) -> Path | None:
    """The run's most recently written complete checkpoint: `checkpoints/last.ckpt`, unless a kill between an
    epoch's two checkpoint writes left it older than (or without) that epoch's `epochNNN.ckpt`."""
    written = [path for path in (output_dir / "checkpoints").glob("*.ckpt") if zipfile.is_zipfile(path)]
    return max(written, key=lambda path: (path.stat().st_mtime_ns, path.name == LAST_CHECKPOINT.name), default=None)


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """`ckpt_path=last` means this run directory's newest checkpoint; there must be one. A requeued SLURM job
    continues from its own newest checkpoint when it has one."""
    if ckpt_path is None and requeued() and newest_checkpoint(output_dir) is not None:
        ckpt_path = "last"
    if ckpt_path is None:
        return None
    path = newest_checkpoint(output_dir) if ckpt_path == "last" else Path(ckpt_path)
    if path is None or not path.is_file():
        where = output_dir / "checkpoints" if ckpt_path == "last" else path
        hint = ""
        if ckpt_path == "last":
            hint = (
                " (the run stopped before its first checkpoint: run the same command without ckpt_path to start it "
                "again)"
                if earlier_attempt(output_dir)
                else " (ckpt_path=last resumes the run in hydra.run.dir=<its output dir>)"
            )
        raise MissingInputError(f"ckpt_path={ckpt_path!r}: no checkpoint at {where}{hint}")
    return str(check_checkpoint(path))  # a truncated file fails here, not deep inside torch


def earlier_attempt(output_dir: Path) -> list[str]:
    """What an earlier start of a run left in its directory (its summary, logs, figures), checkpoints aside."""
    return [name for name in (SUMMARY_FILE, "csv", "wandb", "feature_evolution") if (output_dir / name).exists()]


def refuse_to_overwrite(output_dir: Path) -> None:
    """A fresh run never writes into the directory of an earlier run that got somewhere: one with a checkpoint, or
    one that completed. An attempt stopped before its first checkpoint has nothing to resume: it starts again."""
    checkpoints = sorted(path.name for path in (output_dir / "checkpoints").glob("*.ckpt"))
    summary = output_dir / SUMMARY_FILE
    completed = summary.is_file() and json.loads(summary.read_text() or "{}").get("status") == "completed"
    if checkpoints or completed:
        held = f"checkpoints {', '.join(checkpoints)}" if checkpoints else f"a completed run ({SUMMARY_FILE})"
        raise ExistingOutputError(
            f"{output_dir} already holds a run ({held}); resume it with ckpt_path=last "
            "or leave hydra.run.dir to its default to start a new one"
        )


def csv_rows_to_keep(ckpt_path: str | None) -> int:
    """The rows of metrics.csv a run keeps: those written before its checkpoint; none when it starts over."""
    if ckpt_path is None:
        return 0
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)  # mapped: no tensor is read
    return checkpoint.get(LOGGED_ROWS)


def refuse_script_relaunch_in_multirun(trainer: L.Trainer) -> None:
    """Lightning's `strategy=ddp` starts ranks 1..N-1 by re-running this script's command line; in a Hydra
    multirun that command line is the whole sweep, so rank 1 would run a sweep of its own (another sweep dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.pytorch.strategies import ParallelStrategy
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    strategy = trainer.strategy
    relaunch = (
        isinstance(strategy, ParallelStrategy)
        and isinstance(strategy.launcher, _SubprocessScriptLauncher)
        and strategy.cluster_environment is not None
        and not strategy.cluster_environment.creates_processes_externally
    )
    if multirun and relaunch:
        raise RuntimeError(
            f"{type(strategy).__name__} (trainer.strategy=ddp) would start the other ranks by re-running the command "
            f"line, "
            "which in a multirun (-m) is the whole sweep. In a multirun let SLURM start one process per device "
            "(hydra/launcher=slurm); on one machine, run each point of the sweep as a run of its own (without -m)"
        )


def log_to_a_file_per_rank() -> None:
    """Under DDP every rank runs this job with Hydra's log file: ranks other than 0 write `<name>.rank<N>.log`
    beside it, so that the run's log is rank 0's alone and another rank's lines can still be found."""
    from lightning.pytorch.utilities import rank_zero_only

    rank = getattr(rank_zero_only, "rank", 0)  # set by Lightning on the function object
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
    mark_smoke_run(cfg)  # synthetic data or debug=smoke: group <group>-smoke, before summary.json and loggers
    log_to_a_file_per_rank()
    output_dir = output_dir_of(cfg)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is None:
        refuse_to_overwrite(output_dir)

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        callbacks = instantiate_group(cfg.get("callbacks"))
        loggers = instantiate_loggers(
            cfg, output_dir, resume=ckpt_path is not None, csv_rows=csv_rows_to_keep(ckpt_path)
        )
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        refuse_script_relaunch_in_multirun(trainer)
        log_config(trainer.loggers, cfg, output_dir)

        result: dict[str, Any] = {}
        status, error = "failed", None
        try:
            if cfg.get("train", True):
                try:
                    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
                except SIGTERMException:  # Lightning's graceful stop on a stop signal: say how to continue
                    stopped = next(
                        (c.preempted for c in callbacks if isinstance(c, CheckpointOnSignal) and c.preempted), None
                    )
                    if stopped is None:
                        raise
                    raise stopped from None
                result["train"] = metrics_as_floats(model.latest_metrics())  # also those logged before a resume
                result["epochs"] = trainer.current_epoch
                result["train_metrics_epoch"] = trainer.current_epoch  # "train": the last epoch's (1-based)
                for callback in callbacks:  # what callbacks measured over the run (FilterDrift's correlations)
                    if hasattr(callback, "summary_entries"):
                        result.update(callback.summary_entries())
            checkpoint = trainer.checkpoint_callback
            best = getattr(checkpoint, "best_model_path", "")
            if best:
                result["best"] = {"checkpoint": best, "epoch": checkpoint_epoch(best)}
                if checkpoint.monitor is not None:  # None: the last checkpoint, nothing selected
                    result["best"][checkpoint.monitor] = float(checkpoint.best_model_score)
            if cfg.get("test", True):
                trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
                result["test"] = {
                    k: v for k, v in metrics_as_floats(trainer.callback_metrics).items() if k.startswith("test/")
                }
            # data.batch_size is global: each of the world_size processes loads per_device_batch_size of it
            result["world_size"] = trainer.world_size
            result["per_device_batch_size"] = datamodule.per_device_batch_size
            result["bad_images"] = summarize_bad_images(
                getattr(datamodule, "bad_image_log", None) or output_dir / "bad_images.jsonl"
            )
            result["excluded"] = getattr(datamodule, "excluded", None)  # training files data.exclude left out
            if cfg.get("wandb_checkpoints") and best:
                last = Path(best).parent / "last.ckpt"
                files = {"best.ckpt": best, **({"last.ckpt": str(last)} if last.is_file() else {})}
                metadata = {"best": result["best"], "epochs": result.get("epochs"), "arch": cfg.model.net.get("arch")}
                log_checkpoint_artifact(trainer.loggers, files, metadata)
            status = "success"
        except BaseException as raised:
            error = raised
            raise
        finally:
            finish_loggers(trainer.loggers, status, error, {"best": result["best"]} if "best" in result else None)
        summary.update(result)

    return summary


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary = run_app(cfg, train, "zf-train")
    return monitored_value(summary, cfg)


def checkpoint_epoch(path: str) -> int | None:
    """The 1-based epoch a Lightning checkpoint was written in (memory-mapped: the weights are not read)."""
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (OSError, RuntimeError, pickle.UnpicklingError):
        return None
    epoch = stored.get("epoch")
    return int(epoch) + 1 if isinstance(epoch, int) else None


def monitored_value(summary: dict[str, Any], cfg: DictConfig) -> float | None:
    """The best value of the metric the config's model checkpoint monitors: what a Hydra sweeper optimises."""
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor", default=None)
    return summary.get("best", {}).get(monitor) if monitor else None


if __name__ == "__main__":
    main()

"""What zf-train and zf-eval share: building callbacks and loggers, and the run summary on disk."""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from zf_lightning.utils.errors import InputError, user_error_in
from zf_lightning.utils.io import atomic_write_json, atomic_write_text
from zf_lightning.utils.provenance import provenance
from zf_lightning.utils.secrets import redact_secrets

if TYPE_CHECKING:
    import torch

    from zf_lightning.data.base import ImageClassificationDataModule
    from zf_lightning.models import ImageClassifier

SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_run_id.txt"


def instantiate_group(group: DictConfig | None, **kwargs: Any) -> list:
    """Instantiate each entry of a config group such as `callbacks` or `logger` (null entries skipped)."""
    if not group:
        return []
    return [instantiate(entry, **kwargs) for entry in group.values() if entry is not None and "_target_" in entry]


def instantiate_loggers(cfg: DictConfig, output_dir: Path, resume: bool, csv_rows: int | None = None) -> list[Logger]:
    """Loggers of the config; a resumed run continues its W&B run instead of starting another one, and its
    metrics.csv from the `csv_rows` rows written before its checkpoint (None: all of them)."""
    wandb_id_file = output_dir / WANDB_ID_FILE
    loggers = []
    for entry in (cfg.get("logger") or {}).values():
        if entry is None:
            continue
        if entry._target_.endswith("WandbLogger") and resume and wandb_id_file.exists():
            # A W&B service inherited from the parent process (WANDB_SERVICE) may still hold the stream of the
            # killed run with this id, and refuse it ("run ID ... is in use"): this run starts a service of its own.
            os.environ.pop("WANDB_SERVICE", None)
            loggers.append(instantiate(entry, id=wandb_id_file.read_text().strip(), resume="allow"))
        elif entry._target_.endswith("ResumableCSVLogger"):
            loggers.append(instantiate(entry, keep_rows=csv_rows))
        else:
            loggers.append(instantiate(entry))
    return loggers


# W&B keeps each metric's last value as the run's summary; these keep their best one beside it, for the dashboard.
LOWER_IS_BETTER = ("top1_err", "top5_err", "loss")
HIGHER_IS_BETTER = ("mean_class_acc", "mAP")


def define_best_summaries(run: Any) -> None:
    """Each stage's error, loss, accuracy and mAP summarised in W&B by their last and best (min or max) value."""
    for stage in ("train", "val", "test"):
        for names, best in ((LOWER_IS_BETTER, "min"), (HIGHER_IS_BETTER, "max")):
            for name in names:  # one call per metric: a second call on a metric waits on the W&B service
                run.define_metric(f"{stage}/{name}", summary=f"{best},last")


def checkpoint_lineage(cfg: DictConfig) -> list[dict[str, Any]]:
    """The checkpoints a run reads, each with the training run that wrote it: its W&B run id (from
    `wandb_run_id.txt` in that run's directory, the checkpoint's grandparent) and the W&B artifact holding it
    ("model-<id>", logged when the training run had `wandb_checkpoints` on). For the W&B config: offline runs
    cannot declare artifact inputs, so the link is recorded there, and `use_artifact` is called when online."""
    paths = [cfg.get("ckpt_path")] if cfg.get("task_name") != "train" else []
    paths += list(cfg.get("ckpt_paths") or [])
    paths.append(OmegaConf.select(cfg, "model.transfer.checkpoint", default=None, throw_on_missing=False))
    lineage = []
    for path in dict.fromkeys(str(p) for p in paths if p):
        run_dir = Path(path).expanduser().resolve().parent.parent
        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        lineage.append({"checkpoint": path, "training_run": run_id, "artifact": f"model-{run_id}" if run_id else None})
    return lineage


def log_config(loggers: list[Logger], cfg: DictConfig, output_dir: Path) -> None:
    """Send the resolved config (secrets redacted) and the checkpoints it reads (`checkpoint_lineage`) to every
    logger; define W&B's best-value summaries; remember the W&B run id for a later resume."""
    resolved = redact_secrets(OmegaConf.to_container(cfg, resolve=True))
    resolved.update(provenance())
    lineage = checkpoint_lineage(cfg)
    if lineage:
        resolved["lineage"] = lineage
    for logger in loggers:
        logger.log_hyperparams(resolved)
        if isinstance(logger, WandbLogger) and is_global_zero():  # other ranks have no W&B run
            run = logger.experiment
            define_best_summaries(run)
            for source in lineage:
                if source["artifact"] and not run.settings._offline:
                    try:
                        run.use_artifact(f"{source['artifact']}:latest")
                    except Exception as error:  # the training run logged no artifact, or it is not synced yet
                        print(
                            f"W&B: no artifact {source['artifact']} to link ({type(error).__name__})", file=sys.stderr
                        )
            atomic_write_text(run.id, output_dir / WANDB_ID_FILE)


def log_checkpoint_artifact(loggers: list[Logger], files: dict[str, str], metadata: dict[str, Any]) -> None:
    """The run's checkpoints (`files`: {name in the artifact: path}) as one W&B artifact "model-<run id>", aliases
    "best" and "latest"; offline it is kept with the run and uploaded by `wandb sync`."""
    import wandb

    for logger in loggers:
        if isinstance(logger, WandbLogger) and is_global_zero():
            run = logger.experiment
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
            for name, path in files.items():
                artifact.add_file(path, name=name)
            run.log_artifact(artifact, aliases=["best", "latest"])


def finish_loggers(
    loggers: list[Logger],
    status: str = "success",
    error: BaseException | None = None,
    summary: dict[str, Any] | None = None,
) -> None:
    """Close every logger; W&B runs are finished so that the next job of a multirun starts its own run.

    Each W&B run gets `status` ("completed" or "failed") and `summary` (e.g. the best checkpoint) in its
    summary; a failed job's also the `error` and a non-zero exit code, so the W&B dashboard (and `zf-tables
    --wandb`) shows it as failed, not as a finished run without numbers.
    """
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.summary["status"] = "completed" if status == "success" else "failed"
            if summary:
                logger.experiment.summary.update(summary)
            if status != "success":
                if error is not None:
                    logger.experiment.summary["error"] = redact_secrets(f"{type(error).__name__}: {error}")
            logger.experiment.finish(exit_code=0 if status == "success" else 1)


@contextmanager
def job_loggers(cfg: DictConfig, output_dir: Path) -> Iterator[list[Logger]]:
    """The job's loggers with the config logged; on an error they are finished as failed, so that the next
    job of a multirun does not write into this job's W&B run. The job finishes them itself on success."""
    loggers = instantiate_loggers(cfg, output_dir, resume=False)
    log_config(loggers, cfg, output_dir)
    try:
        yield loggers
    except BaseException as error:
        finish_loggers(loggers, "failed", error)
        raise


def log_images(loggers: list[Logger], images: dict[str, Path], captions: dict[str, str] | None = None) -> None:
    """PNG files to W&B as images, one key each, with their captions (other loggers keep them on disk only)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for key, path in images.items():
                caption = (captions or {}).get(key)
                logger.log_image(key=key, images=[str(path)], caption=[caption] if caption else None)


def resolve_device(name: str) -> torch.device:
    """ "auto" -> the GPU when there is one; otherwise the device named ("cpu", "cuda:1")."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_global_zero() -> bool:
    """Whether this process is rank 0 of a distributed run, or the only process.

    Under DDP every rank runs the whole job: files of the run are written by rank 0 alone. The rank comes from the
    environment (RANK, LOCAL_RANK, SLURM_PROCID) until a Trainer exists, which then sets the global rank.
    """
    return getattr(rank_zero_only, "rank", 0) == 0  # set by Lightning on the function object


def output_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def metrics_as_floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in sorted(metrics.items())}


@contextmanager
def run_summary(cfg: DictConfig) -> Iterator[dict[str, Any]]:
    """The run's `summary.json` (status, metrics, resolved config), written when the block ends, whether it
    completed, failed or was stopped; the block fills the dict it is given."""
    output_dir = output_dir_of(cfg)
    started = time.time()
    summary: dict[str, Any] = {
        "task_name": cfg.task_name,
        "run_name": cfg.get("run_name"),
        "group": cfg.get("group"),
        "tags": list(cfg.get("tags") or []),
        "output_dir": str(output_dir),
        "overrides": _overrides(),
        "config": redact_secrets(OmegaConf.to_container(cfg, resolve=True)),
        **provenance(),  # package versions and the git commit
    }
    try:
        yield summary
        summary["status"] = "completed"
    except BaseException as error:
        # Interrupted (a stop signal, with a checkpoint to continue from) is not failed: the run is not over.
        summary["status"] = "interrupted" if isinstance(error, SystemExit) else "failed"
        summary["error"] = f"{type(error).__name__}: {error}"
        summary["traceback"] = traceback.format_exc()
        raise
    finally:
        summary["duration_s"] = round(time.time() - started, 2)
        if is_global_zero():  # one summary per run, not one per DDP rank
            atomic_write_json(redact_secrets(summary), output_dir / SUMMARY_FILE)  # error texts and overrides too


def run_app(cfg: DictConfig, task: Callable[[DictConfig], dict[str, Any]], command: str) -> dict[str, Any]:
    """Run an entry point's task as its Hydra main does: say where the outputs go when it starts, and which were
    written when it ends. A user error (a bad config or input: `utils.errors.UserError`, also when Hydra wrapped
    it) ends the process with its message on one line and exit status 2, without a traceback (HYDRA_FULL_ERROR=1
    shows it); in a multirun it goes to Hydra, which fails that job and goes on with the others. Programming
    errors keep their traceback."""
    output_dir = output_dir_of(cfg)
    started = time.time()
    if is_global_zero():
        print(f"{command}: writing to {output_dir}", flush=True)
    try:
        summary = task(cfg)
    except Exception as error:
        user = user_error_in(error)
        if user is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or _in_multirun():
            raise
        print(f"{command}: error: {user}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if is_global_zero():
        print(
            f"{command}: wrote {output_dir}: {', '.join(written_since(output_dir, started)) or 'nothing'}", flush=True
        )
    return summary


def written_since(directory: Path, started: float) -> list[str]:
    """The entries of `directory` written since `started` (folders with their number of new files), Hydra's own
    bookkeeping and the log left out."""
    written = []
    for entry in sorted(Path(directory).iterdir()) if Path(directory).is_dir() else []:
        if entry.name == ".hydra" or entry.suffix == ".log":
            continue
        if entry.is_dir():
            new = [path for path in entry.rglob("*") if path.is_file() and path.stat().st_mtime >= started]
            if new:
                written.append(f"{entry.name}/ ({len(new)} file{'s' if len(new) != 1 else ''})")
        elif entry.stat().st_mtime >= started:
            written.append(entry.name)
    return written


def _in_multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _overrides() -> list[str]:
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # composed without a Hydra run (tests, notebooks)
        return []


def check_compatible(model: ImageClassifier, datamodule: ImageClassificationDataModule, ckpt_path: str | Path) -> None:
    """The data must have the checkpoint's classes and input size; say which differs."""
    net = model.hparams["net"]
    if net.get("num_classes") != datamodule.num_classes:
        raise InputError(
            f"checkpoint {ckpt_path} has {net.get('num_classes')} classes but data.num_classes={datamodule.num_classes}"
        )
    if net.get("input_size") != datamodule.crop_size:
        raise InputError(
            f"checkpoint {ckpt_path} was built for {net.get('input_size')}px inputs but "
            f"data.crop_size={datamodule.crop_size}"
        )


def load_checkpoint_with_data(
    ckpt_path: str | Path, data_cfg: DictConfig
) -> tuple[ImageClassifier, ImageClassificationDataModule]:
    """(model, datamodule) from a zf-train checkpoint: weights only, checked against the data, with its mean image.

    The training run's mean image comes from the checkpoint, so inputs are normalised exactly as in training.
    """
    from zf_lightning.models import ImageClassifier
    from zf_lightning.utils.io import load_checkpoint

    checkpoint = load_checkpoint(ckpt_path)  # refuses arbitrary pickles with a clear message first
    model = ImageClassifier.load_from_checkpoint(Path(ckpt_path).expanduser(), map_location="cpu", weights_only=True)
    datamodule = instantiate(data_cfg)
    check_compatible(model, datamodule, ckpt_path)
    datamodule.load_state_dict(checkpoint.get(type(datamodule).__qualname__, {}))
    return model, datamodule

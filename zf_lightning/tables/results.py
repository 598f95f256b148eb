"""Runs as records: from the `summary.json` files of run directories, or from W&B runs.

A record keeps the summary.json layout (run_name, group, config, train, test), so that the mapping of
runs to table cells in paper.yaml is a dotted path into it, whichever the source.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from zf_lightning.utils.errors import InputError
from zf_lightning.utils.smoke import SMOKE_TASKS, dataset_of, is_smoke_run, is_synthetic, smoke_group

SUMMARY_FILE = "summary.json"  # as written by zf_lightning.cli.common.run_with_summary
HYDRA_DIR = ".hydra"
# Folders of a run that never hold another run; not walked into.
_SKIP_DIRS = {HYDRA_DIR, "checkpoints", "wandb", "__pycache__"}

COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"
# The commands (task_name) whose numbers come from their data config; an analysis's `data` only describes the
# checkpoint (synthetic by default, whatever images it is given), so it says nothing of the run's data.
_DATA_TASKS = SMOKE_TASKS | {"features"}


@dataclass
class RunRecord:
    source: str  # the run directory, or the W&B run's path
    status: str  # COMPLETED | FAILED | INCOMPLETE (no summary: killed, or still running)
    data: dict[str, Any] = field(default_factory=dict)  # summary.json's content
    error: str | None = None
    time: float = 0.0  # when it ended: of two runs of one replicate, the later wins

    @property
    def group(self) -> str | None:
        return self.data.get("group")

    @property
    def dataset(self) -> str | None:
        """The dataset the run is on, from its config ("imagenet", "caltech101", "synthetic"); None if not recorded."""
        return dataset_of(self.get("config.data")) if self._data_task else None

    @property
    def synthetic(self) -> bool:
        return self._data_task and is_synthetic(self.get("config.data"))

    @property
    def _data_task(self) -> bool:
        task = self.data.get("task_name") or self.get("config.task_name")
        return task is None or task in _DATA_TASKS

    def get(self, path: str) -> Any:
        """The value at a dotted path ("config.data.train_per_class", "test.test/top1_err"), or None."""
        node: Any = self.data
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def find_runs(paths: Iterable[str | Path]) -> list[RunRecord]:
    """Every run under these sweep or run directories: each `summary.json`, and each job directory that
    Hydra started (it has `.hydra/`) but that never wrote one."""
    records: dict[Path, RunRecord] = {}
    for root in map(Path, paths):
        if root.is_file() and root.name == SUMMARY_FILE:
            records[root.parent.resolve()] = read_summary(root)
        for directory, subdirs, files in os.walk(root):
            here = Path(directory).resolve()
            if SUMMARY_FILE in files:
                records[here] = read_summary(here / SUMMARY_FILE)
            elif HYDRA_DIR in subdirs:
                records[here] = incomplete_run(here)
            subdirs[:] = sorted(d for d in subdirs if d not in _SKIP_DIRS)
    return [records[path] for path in sorted(records)]


def read_summary(path: Path) -> RunRecord:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise InputError("not a JSON object")
    except (OSError, ValueError) as error:
        record = incomplete_run(path.parent)
        record.error = f"unreadable {SUMMARY_FILE}: {error}"
        return record
    # An interrupted run (stopped by a signal, resumable) has no final numbers yet: incomplete, not failed.
    statuses: dict[Any, str] = {COMPLETED: COMPLETED, "interrupted": INCOMPLETE}  # keyed by whatever it logged
    status = statuses.get(data.get("status"), FAILED)
    message = data.get("error") or (None if status == COMPLETED else f"status {data.get('status')!r}")
    return RunRecord(str(path.parent), status, data, message, path.stat().st_mtime)


def incomplete_run(job_dir: Path) -> RunRecord:
    """A job with no summary: placed in its table from Hydra's copy of its config, so that it is marked."""
    config = hydra_job_config(job_dir / HYDRA_DIR)
    group = config.get("group")
    # As the job would have set it (utils/smoke.py): Hydra saved the config before the job marked it.
    if isinstance(group, str) and config.get("task_name") in SMOKE_TASKS and is_smoke_run(config):
        group = smoke_group(group)
    data = {"run_name": config.get("run_name"), "group": group, "config": config}
    when = (job_dir / HYDRA_DIR).stat().st_mtime if (job_dir / HYDRA_DIR).exists() else 0.0
    return RunRecord(str(job_dir), INCOMPLETE, data, f"no {SUMMARY_FILE}: killed, or still running", when)


def hydra_job_config(hydra_dir: Path) -> dict[str, Any]:
    """The job's config from `.hydra/config.yaml`, resolved as far as it can be outside the job (the rest
    None). `${hydra:...}` (e.g. run_name: ${hydra:runtime.choices.model}) is read from `.hydra/hydra.yaml`."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    try:
        text = (hydra_dir / "config.yaml").read_text(encoding="utf-8")
        config = OmegaConf.create(re.sub(r"\$\{hydra:", "${hydra.", text))
        if (hydra_dir / "hydra.yaml").is_file():
            config = OmegaConf.merge(config, OmegaConf.load(hydra_dir / "hydra.yaml"))
    except Exception:  # no or broken config: the job is still listed, just not placed in a table
        return {}

    def resolve(node: Any) -> Any:
        if isinstance(node, DictConfig):
            return {key: resolve_item(node, key) for key in node.keys()}
        if isinstance(node, ListConfig):
            return [resolve_item(node, index) for index in range(len(node))]
        return node

    def resolve_item(node: DictConfig | ListConfig, key: Any) -> Any:
        try:
            return resolve(node[key])
        except Exception:  # an interpolation that needs the running job
            return None

    if not isinstance(config, DictConfig):
        return {}
    resolved = resolve(config)
    resolved.pop("hydra", None)
    return resolved


# W&B run states: https://docs.wandb.ai/ref/python/public-api/run (finished, failed, crashed, killed, running, ...)
_WANDB_STATUS = {"finished": COMPLETED, "failed": FAILED, "crashed": FAILED, "killed": FAILED}


def wandb_runs(project: str, groups: Iterable[str], api: Any = None) -> list[RunRecord]:  # api: a wandb.Api
    """The runs of these groups in a W&B project ("entity/project"), as records."""
    if api is None:
        import wandb

        api = wandb.Api()
    records = []
    for group in groups:
        records += [wandb_record(run, project) for run in api.runs(project, filters={"group": group})]
    return records


def wandb_record(run: Any, project: str = "") -> RunRecord:
    """A W&B run as summary.json would have it: config as logged (the resolved Hydra config), the metrics of
    the run's summary split by stage, the run state as status."""
    summary = run.summary
    metrics = {key: summary[key] for key in summary.keys()}
    config = _unflatten(dict(run.config))
    status = _WANDB_STATUS.get(run.state, INCOMPLETE)
    # A job that failed inside zf-train still finishes its W&B run: trust a status it logged, if any.
    if metrics.get("status") in (COMPLETED, FAILED):
        status = metrics["status"]
    error = None if status == COMPLETED else (metrics.get("error") or f"W&B run state {run.state!r}")
    data = {
        "run_name": config.get("run_name") or run.name,
        "group": run.group or config.get("group"),
        "config": config,
        "train": {k: v for k, v in metrics.items() if k.startswith(("train/", "val/"))},
        "test": {k: v for k, v in metrics.items() if k.startswith("test/")},
    }
    source = "wandb:" + "/".join(str(part) for part in getattr(run, "path", None) or [project, run.name])
    return RunRecord(source, status, data, error, _timestamp(getattr(run, "created_at", None)))


def _unflatten(config: dict[str, Any]) -> dict[str, Any]:
    """{"data/train_per_class": 15} -> {"data": {"train_per_class": 15}}: loggers that flatten nested
    configs use "/"; nested dicts are kept as they are."""
    nested: dict[str, Any] = {}
    for key, value in config.items():
        node = nested
        *parents, leaf = str(key).split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = _unflatten(value) if isinstance(value, dict) else value
    return nested


def _timestamp(created_at: object) -> float:
    try:
        return datetime.fromisoformat(str(created_at).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0

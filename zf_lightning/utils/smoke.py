"""Smoke runs kept apart from real ones: a run on synthetic data, or shrunk by `debug=smoke`, goes to the W&B and
summary.json group `<group>-smoke` (e.g. `table3-smoke`) with the tag `smoke`, whatever group a sweep or an
experiment gives it, so that it can never fill a cell of the paper's tables.

Done on the composed config, not inside it: `+sweep=...` is appended after everything in train.yaml's defaults
list, so a sweep's `group: table3` replaces whatever debug/smoke or the data config set, an interpolation included.
zf-train and zf-eval apply it (`mark_smoke_run`) before summary.json and the loggers read the group; zf-tables
applies the same rule to a killed job's `.hydra/config.yaml`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SMOKE_SUFFIX = "-smoke"
SMOKE_TAG = "smoke"
SYNTHETIC = "synthetic"
# The commands that mark their runs (task_name): those whose numbers come from the data config. For the analyses
# and figures `data` only describes the checkpoint (synthetic by default, whatever images they are given).
SMOKE_TASKS = frozenset({"train", "eval"})


def dataset_of(data: Any) -> str | None:
    """The dataset a run's data config (a mapping or a DictConfig) is on: its `dataset` ("caltech101"), else its
    datamodule class's name ("zf_lightning.data.ImageNetDataModule" -> "imagenet"); None when it names neither."""
    if not isinstance(data, Mapping):
        return None
    try:
        dataset, target = data.get("dataset"), data.get("_target_")
    except Exception:  # an interpolation that cannot resolve here
        return None
    if isinstance(dataset, str) and dataset:
        return dataset.lower()
    if isinstance(target, str) and target:
        return target.rsplit(".", 1)[-1].removesuffix("DataModule").lower() or None
    return None


def is_synthetic(data: Any) -> bool:
    """Whether a data config is the synthetic one (conf/data/synthetic.yaml)."""
    return dataset_of(data) == SYNTHETIC


def is_smoke_run(config: Mapping[str, Any]) -> bool:
    """A run not comparable to the paper: on synthetic data, or shrunk by debug=smoke (which sets `smoke: true`)."""
    return bool(config.get("smoke")) or is_synthetic(config.get("data"))


def smoke_group(group: str) -> str:
    """ "table3" -> "table3-smoke" (unchanged if it already is one)."""
    return group if group.endswith(SMOKE_SUFFIX) else f"{group}{SMOKE_SUFFIX}"


def mark_smoke_run(cfg: Any) -> bool:
    """Move a smoke run (`is_smoke_run`) to the group `<group>-smoke` and tag it `smoke`, in place (cfg: the run's
    DictConfig); returns whether it is one. Call it before summary.json and the loggers read the group."""
    from omegaconf import open_dict

    if not is_smoke_run(cfg):
        return False
    with open_dict(cfg):
        cfg.group = smoke_group(str(cfg.get("group") or cfg.get("task_name")))
        tags = list(cfg.get("tags") or [])
        cfg.tags = tags if SMOKE_TAG in tags else [*tags, SMOKE_TAG]
    return True

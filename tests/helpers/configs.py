"""Compose the real Hydra configs with tmp output dirs, as the console scripts would, without a subprocess."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from zf_lightning.config import config_dir

# Small enough for a 2-core CPU: quarter of a quarter width, few images, no worker processes.
TINY = [
    "model.net.width_multiplier=0.125",
    # The quickstart's small conv1 start (visible filters after 20 epochs) leaves a net this small at chance for the
    # one or two epochs tests train, where every epoch ties: PyTorch's init learns, as the tests expect.
    "model.net.conv1_init_std=null",
    "data.train_per_class=20",
    "data.val_per_class=4",
    "data.test_per_class=4",
    "data.batch_size=20",
    "data.num_workers=0",
    "~callbacks.progress_bar",
]


def compose_config(name: str, output_dir: Path, overrides: list[str] = ()) -> DictConfig:
    """The config `zf-<name>` would run with these overrides, writing into `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name=name,
            overrides=[f"paths.log_dir={output_dir.parent / 'logs'}", *overrides],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as hydra.main hands it to the task
    output_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the console scripts in a subprocess with outputs under tmp_path."""
    return {**os.environ, "ZF_LOG_DIR": str(tmp_path / "logs"), "WANDB_SILENT": "true"}


def run_console_main(monkeypatch, tmp_path: Path, main: Callable[[], Any], argv: list[str]) -> int:
    """A console script's entry point (`argv[0]` its name), in this process, with outputs under tmp_path: its
    exit status, as the script would end with it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ZF_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr(sys, "argv", argv)
    try:
        main()
        return 0
    except SystemExit as stopped:
        return stopped.code if isinstance(stopped.code, int) else 1


def wandb_run_bytes(run_dir: Path, needle: bytes, timeout: float = 30.0) -> bytes:
    """The offline W&B run file under `run_dir`, once it holds `needle`: W&B's service process writes it
    asynchronously and, on a loaded machine, can still be writing after `finish()` returned."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        found = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
        data = found[0].read_bytes() if found else b""
        if needle in data or time.monotonic() > deadline:
            return data
        time.sleep(0.5)

"""Fixtures shared by the tests; the helpers they use are in tests/helpers/."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from tests.helpers.configs import TINY, compose_config
from tests.helpers.console_runs import ConsoleRuns, launch_default_runs


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` are skipped on a machine without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ZF_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def compose_train(tmp_path):
    def make(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
        return compose_config("train", output_dir or tmp_path / "run", [*TINY, *overrides])

    return make


def _train_tiny(tmp_path_factory, name: str, overrides: list[str] = ()) -> Path:
    from zf_lightning.cli.train import train

    out = tmp_path_factory.mktemp(name)
    cache = tmp_path_factory.getbasetemp() / "cache"
    cfg = compose_config(
        "train", out, [*TINY, "trainer.max_epochs=1", "logger=csv", "test=false", f"data.cache_dir={cache}", *overrides]
    )
    summary = train(cfg)
    GlobalHydra.instance().clear()
    return Path(summary["best"]["checkpoint"])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the TINY ZFNet after one epoch on the default synthetic data (trained once per session)."""
    return _train_tiny(tmp_path_factory, "tiny_zfnet")


@pytest.fixture(scope="session")
def tiny_alexnet_checkpoint(tmp_path_factory) -> Path:
    """The same for AlexNet (11x11/4 first layer)."""
    return _train_tiny(tmp_path_factory, "tiny_alexnet", ["model=alexnet"])


@pytest.fixture(scope="session")
def console_default_runs(tmp_path_factory) -> ConsoleRuns:
    """Two short runs of the default config launched at once through the console script (read by several tests)."""
    return launch_default_runs(tmp_path_factory.mktemp("console_runs"))

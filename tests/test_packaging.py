"""The project as a user installs it from a wheel (not this checkout): its configs, sweeps and paper tables are
inside, a sweep composes from another directory, and it is typed (py.typed)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_the_configs_and_a_sweep_composes_from_another_directory(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path / "wheel")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("zf_lightning-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for inside in ("zf_lightning/py.typed", "zf_lightning/conf/train.yaml", "zf_lightning/conf/sweep/table3.yaml"):
        assert inside in names
    assert "zf_lightning/tables/paper.yaml" in names
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import zf_lightning\n"
        "from hydra import compose, initialize_config_dir\n"
        "from zf_lightning.config import config_dir\n"
        "from zf_lightning.config.checker import config_problems\n"
        "with initialize_config_dir(config_dir=config_dir(), version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['+sweep=table3', 'debug=smoke'], return_hydra_config=True)\n"
        "assert config_problems(cfg) == [], config_problems(cfg)\n"
        "print(zf_lightning.__file__)\n"
        "print(cfg.hydra.sweeper.params.model)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    module_file, models = done.stdout.splitlines()[-2:]
    assert module_file.startswith(str(tmp_path / "site"))  # the wheel's copy, not this checkout
    assert models.split(",")[:2] == ["alexnet", "alexnet_no_conv34"] and len(models.split(",")) == 12

"""Every sweep in sweeps/ composes with its axes; sweeps run end to end as Hydra multiruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import cli_env
from tests.transfer.fake_trees import make_voc2012
from zf_lightning.cli import config_dir


@pytest.mark.parametrize(
    "primary, sweep, target, params",
    [
        ("train", "table4", "caltech101", {"model.transfer.mode": "pretrained,scratch", "data.train_per_class": "15,30", "data.split_seed": "range(5)"}),
        ("train", "table5", "caltech256", {"model.transfer.mode": "pretrained,scratch", "data.train_per_class": "15,30,45,60", "data.split_seed": "range(5)"}),
        ("train", "table6", "voc2012", {"model.transfer.mode": "pretrained,scratch"}),
        ("features", "feature_analysis", "caltech101", {"experiment": "features_caltech101,features_caltech256", "data.split_seed": "range(5)"}),
    ],
)
def test_each_transfer_sweep_composes_with_its_axes(primary, sweep, target, params):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        required = "ckpt_path=x.ckpt" if primary == "features" else "model.transfer.checkpoint=x.ckpt"
        cfg = compose(primary, overrides=[f"+sweep={sweep}", required],
                      return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.data.dataset == target


@pytest.mark.slow
def test_table6_sweep_runs_every_mode_as_its_own_job(tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    make_voc2012(root, num_images=12)
    command = [
        sys.executable, "-m", "zf_lightning.cli.train", "-m", "+sweep=table6", f"data.root={root}",
        f"model.transfer.checkpoint={tiny_checkpoint}", "model.net.width_multiplier=0.125", "data.resize_size=72", "data.crop_size=64",
        "data.batch_size=8", "data.num_workers=0", "data.ten_crop_test=false", "trainer=cpu", "trainer.max_epochs=1", "logger=csv",
        "~callbacks.progress_bar", f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads((tmp_path / "sweep" / str(job) / "summary.json").read_text()) for job in (0, 1)]
    assert [s["run_name"] for s in summaries] == ["voc2012_pretrained", "voc2012_scratch"]
    assert all(s["status"] == "completed" and s["group"] == "table6" and "test/mAP" in s["test"] for s in summaries)


TABLE3_ROWS = [
    "alexnet", "alexnet_no_conv34", "alexnet_no_fc7", "alexnet_no_fc67", "alexnet_no_conv34_fc67", "alexnet_fc2048", "alexnet_fc8192",
    "zfnet", "zfnet_fc2048", "zfnet_fc8192", "zfnet_conv512_1024_512", "zfnet_fc8192_conv512_1024_512",
]


@pytest.mark.parametrize("sweep, rows", [("table2", ["alexnet", "zfnet", "zfnet_conv512_1024_512"]), ("table3", TABLE3_ROWS)])
def test_imagenet_sweeps_have_one_job_per_row_and_shrink_with_one_override(sweep, rows):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"+sweep={sweep}", "debug=smoke", f"model={rows[-1]}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.model.split(",") == rows
    assert cfg.group == sweep and cfg.data._target_.endswith("SyntheticDataModule") and cfg.trainer.max_epochs == 1
    assert cfg.model.net.width_multiplier == 0.125 and cfg.trainer.accelerator == "cpu"
    assert cfg.hydra.runtime.choices.model == rows[-1]  # run_name: the row

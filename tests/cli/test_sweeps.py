"""Every sweep in sweeps/ composes with its axes; sweeps run end to end as Hydra multiruns."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from tests.helpers.configs import cli_env
from tests.helpers.fake_trees import make_voc2012
from zf_lightning.config import config_dir
from zf_lightning.utils.smoke import mark_smoke_run


@pytest.mark.parametrize(
    "primary, sweep, target, params",
    [
        (
            "train",
            "table4",
            "caltech101",
            {
                "model.transfer.mode": "pretrained,scratch",
                "data.train_per_class": "15,30",
                "data.split_seed": "range(5)",
            },
        ),
        (
            "train",
            "table5",
            "caltech256",
            {
                "model.transfer.mode": "pretrained,scratch",
                "data.train_per_class": "15,30,45,60",
                "data.split_seed": "range(5)",
            },
        ),
        (
            "train",
            "table6",
            "voc2012",
            {"model.transfer.mode": "pretrained,scratch", "model.task": "multilabel_softmax,multilabel"},
        ),
        (
            "features",
            "feature_analysis",
            "caltech101",
            {"experiment": "features_caltech101,features_caltech256", "data.split_seed": "range(5)"},
        ),
    ],
)
def test_each_transfer_sweep_composes_with_its_axes(primary, sweep, target, params):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        required = "ckpt_path=x.ckpt" if primary == "features" else "model.transfer.checkpoint=x.ckpt"
        cfg = compose(primary, overrides=[f"+sweep={sweep}", required], return_hydra_config=True)
    assert dict(cfg.hydra.sweeper.params) == params
    assert cfg.data.dataset == target


@pytest.mark.slow
def test_table6_sweep_runs_every_mode_and_head_as_its_own_job(tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    make_voc2012(root, num_images=12)
    command = [
        sys.executable,
        "-m",
        "zf_lightning.cli.train",
        "-m",
        "+sweep=table6",
        f"data.root={root}",
        f"model.transfer.checkpoint={tiny_checkpoint}",
        "model.net.width_multiplier=0.125",
        "data.resize_size=72",
        "data.crop_size=64",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.ten_crop_test=false",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "logger=csv",
        "~callbacks.progress_bar",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    done = subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads((tmp_path / "sweep" / str(job) / "summary.json").read_text()) for job in range(4)]
    assert [s["run_name"] for s in summaries] == [
        f"voc2012_{mode}_{task}" for mode in ("pretrained", "scratch") for task in ("multilabel_softmax", "multilabel")
    ]
    assert all(s["status"] == "completed" and s["group"] == "table6" and "test/mAP" in s["test"] for s in summaries)

    import pandas as pd  # the transfer table from these runs: ours beside the paper's per-class test APs

    tables = run_tables([tmp_path / "sweep"], tmp_path / "tables")
    assert tables.returncode == 0, tables.stderr
    cells = pd.read_csv(tmp_path / "tables" / "table6.csv").set_index(["row", "column"])
    softmax, sigmoid = "pretrained/multilabel_softmax", "pretrained/multilabel"
    assert cells.loc[(softmax, "mean"), "ours_mean"] == pytest.approx(summaries[0]["test"]["test/mAP"], abs=0.05)
    assert cells.loc[(sigmoid, "mean"), "ours_mean"] == pytest.approx(summaries[1]["test"]["test/mAP"], abs=0.05)
    # the paper's numbers sit beside its own head, the softmax
    assert (
        cells.loc[(softmax, "mean"), "paper_mean"] == 79.0 and cells.loc[(softmax, "aeroplane"), "paper_mean"] == 96.0
    )
    assert pd.isna(cells.loc[(sigmoid, "mean"), "paper_mean"])
    assert "val" in (tmp_path / "tables" / "table6.md").read_text()  # says ours are on val, the paper's on test


TABLE3_ROWS = [
    "alexnet",
    "alexnet_no_conv34",
    "alexnet_no_fc7",
    "alexnet_no_fc67",
    "alexnet_no_conv34_fc67",
    "alexnet_fc2048",
    "alexnet_fc8192",
    "zfnet",
    "zfnet_fc2048",
    "zfnet_fc8192",
    "zfnet_conv512_1024_512",
    "zfnet_fc8192_conv512_1024_512",
]


@pytest.mark.parametrize(
    "sweep, rows", [("table2", ["alexnet", "zfnet", "zfnet_conv512_1024_512"]), ("table3", TABLE3_ROWS)]
)
def test_imagenet_sweeps_have_one_job_per_row_and_shrink_with_one_override(sweep, rows):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"+sweep={sweep}", "debug=smoke", f"model={rows[-1]}"], return_hydra_config=True
        )
    assert cfg.hydra.sweeper.params.model.split(",") == rows
    assert cfg.data._target_.endswith("SyntheticDataModule") and cfg.trainer.max_epochs == 1
    assert cfg.model.net.width_multiplier == 0.125 and cfg.trainer.accelerator == "cpu"
    assert cfg.hydra.runtime.choices.model == rows[-1]  # run_name: the row
    # The sweep's group wins in Hydra's defaults order; the job moves itself to the smoke group before it logs.
    assert cfg.group == sweep and mark_smoke_run(cfg) and cfg.group == f"{sweep}-smoke" and "smoke" in cfg.tags


def run_sweep(tmp_path: Path, name: str, overrides: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    sweep_dir = tmp_path / name
    command = [
        sys.executable,
        "-m",
        "zf_lightning.cli.train",
        "-m",
        *overrides,
        "logger=csv",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    return subprocess.run(command, env=cli_env(tmp_path), capture_output=True, text=True, timeout=900), sweep_dir


def run_tables(
    paths: list[Path], out: Path, options: list[str] = (), console: bool = False
) -> subprocess.CompletedProcess:
    """zf-tables: the console script when `console`, else its `main(argv)` in this process, which gives the same
    exit status and output without another 2 s of imports."""
    args = [*map(str, paths), "--out", str(out), *options]
    if console:
        script = Path(sys.executable).parent / "zf-tables"
        return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)
    from zf_lightning.cli.tables import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        code = main(args)
    return subprocess.CompletedProcess(["zf-tables", *args], code, stdout.getvalue(), stderr.getvalue())


@pytest.mark.slow
def test_table3_smoke_sweep_lands_in_its_smoke_group_and_zf_tables_smoke_has_every_row_beside_the_paper(tmp_path):
    import pandas as pd

    done, sweep_dir = run_sweep(tmp_path, "table3", ["+sweep=table3", "debug=smoke"])
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(path.read_text()) for path in sorted(sweep_dir.glob("*/summary.json"))]
    assert sorted(s["run_name"] for s in summaries) == sorted(TABLE3_ROWS)
    # not the real table3 group, whatever the sweep sets: its own, with the smoke tag beside the sweep's
    assert all(s["status"] == "completed" and s["group"] == "table3-smoke" for s in summaries)
    assert all(s["tags"] == ["imagenet", "table3", "smoke"] for s in summaries)

    # zf-tables builds the paper's tables from the real groups: none here, and it says where the runs are
    refused = run_tables([sweep_dir], tmp_path / "tables", console=True)
    assert refused.returncode == 2 and "zf-tables with --smoke builds their tables" in refused.stderr
    assert not (tmp_path / "tables").exists()

    tables = run_tables([sweep_dir], tmp_path / "tables", ["--smoke"])
    assert tables.returncode == 0, tables.stderr
    markdown = (tmp_path / "tables" / "table3.md").read_text()
    assert "Data of our runs: synthetic data (12 runs), smoke runs (group table3-smoke): not comparable" in markdown
    assert "ImageNet 2012 validation set" not in markdown  # not presented as our runs on ImageNet
    for suffix in ("md", "tex", "csv"):
        assert (tmp_path / "tables" / f"table3.{suffix}").stat().st_size > 500
    cells = pd.read_csv(tmp_path / "tables" / "table3.csv")
    ours = cells[~cells["reference"]]
    assert sorted(ours["row"].unique()) == sorted(TABLE3_ROWS)
    assert ours["ours_mean"].notna().all() and (ours["n"] == 1).all()  # every row has its number
    assert ours["paper_mean"].notna().all()  # and the paper's beside it
    zfnet_val = ours[(ours["row"] == "zfnet") & (ours["column"] == "val_top1")].iloc[0]
    assert zfnet_val["paper_mean"] == 38.4
    assert zfnet_val["ours_minus_paper"] == pytest.approx(zfnet_val["ours_mean"] - 38.4)
    assert "Our Model (as per Fig. 3)" in markdown  # the paper's row labels


@pytest.mark.slow
def test_a_failed_job_does_not_stop_the_sweep_and_its_row_is_marked_failed(tmp_path):
    import pandas as pd

    # At 56 px AlexNet fits but ZFNet's pool5 would get a 2x2 map: the ZFNet jobs fail while building the model.
    done, sweep_dir = run_sweep(
        tmp_path, "table2", ["+sweep=table2", "debug=smoke", "data.image_size=64", "data.crop_size=56"]
    )
    assert done.returncode != 0  # the multirun reports the failure at the end ...
    status = {
        json.loads(p.read_text())["run_name"]: json.loads(p.read_text()) for p in sweep_dir.glob("*/summary.json")
    }
    assert (
        status["alexnet"]["status"] == "completed" and "test/top1_err" in status["alexnet"]["test"]
    )  # ... after every job ran
    assert status["zfnet"]["status"] == "failed" and "pool5 (after conv5) gets a 2x2 map" in status["zfnet"]["error"]
    assert {s["group"] for s in status.values()} == {"table2-smoke"}  # failed jobs too

    tables = run_tables([sweep_dir], tmp_path / "tables", ["--smoke"])
    assert tables.returncode == 0, tables.stderr
    cells = pd.read_csv(tmp_path / "tables" / "table2.csv")
    by_row = {row: group for row, group in cells[~cells["reference"]].groupby("row")}
    assert set(by_row) == {"alexnet", "zfnet", "zfnet_conv512_1024_512"}  # no row dropped
    assert (by_row["zfnet"].loc[by_row["zfnet"]["column"] != "test_top5", "status"] == "failed").all()
    assert by_row["alexnet"].loc[by_row["alexnet"]["column"] == "val_top1", "ours_mean"].notna().all()
    assert "failed" in (tmp_path / "tables" / "table2.md").read_text()


@pytest.mark.slow
def test_an_optuna_search_minimises_what_zf_train_returns(tmp_path):
    import yaml

    done, sweep = run_sweep(
        tmp_path,
        "optuna",
        ["+sweep=optuna_lr_wd", "hydra.sweeper.n_trials=2", "debug=smoke"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    summaries = [json.loads((sweep / str(job) / "summary.json").read_text()) for job in range(2)]
    # what zf-train's main returned: the monitored metric's best (val top-1 error in the quickstart)
    monitored = [s["best"][s["config"]["callbacks"]["model_checkpoint"]["monitor"]] for s in summaries]
    assert results["best_value"] == min(monitored)
    lrs = [s["config"]["model"]["optimizer"]["lr"] for s in summaries]
    assert len(set(lrs)) == 2 and all(1e-3 <= lr <= 5e-2 for lr in lrs)  # drawn from the search space
    assert results["best_params"]["model.optimizer.lr"] == lrs[monitored.index(min(monitored))]


def test_the_wandb_sweep_recipe_composes_as_hydra_overrides():
    import yaml

    from zf_lightning.config.checker import config_problems

    recipe = yaml.safe_load((Path(config_dir()).parent / "docs" / "wandb_sweep.yaml").read_text())
    fixed = [arg for arg in recipe["command"] if "=" in arg]
    for bound in ("min", "max"):
        sampled = [f"{name}={spec[bound]}" for name, spec in recipe["parameters"].items()]
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = compose("train", overrides=[*fixed, *sampled], return_hydra_config=True)
        assert config_problems(cfg) == []
        assert cfg.model.optimizer.lr == recipe["parameters"]["model.optimizer.lr"][bound]
    assert recipe["metric"]["name"] == "val/top5_err"  # logged by every ImageNet run

"""Smoke runs apart from the paper's tables: synthetic-data and debug=smoke runs go to `<group>-smoke` with the tag
smoke (in the composed config, summary.json and the W&B run), zf-tables reads them only with --smoke and says what
data its runs are on, refuses a table mixing synthetic and real runs, and logs the tables to W&B with --log-wandb."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir

from tests.helpers.configs import compose_config, wandb_run_bytes
from tests.tables.test_tables import TABLE3_ROWS, imagenet_errors, write_job
from zf_lightning.cli.tables import main
from zf_lightning.config import config_dir
from zf_lightning.tables.build import build_tables, to_markdown
from zf_lightning.tables.results import find_runs
from zf_lightning.utils.smoke import mark_smoke_run

SYNTHETIC = {"data": {"_target_": "zf_lightning.data.SyntheticDataModule", "num_classes": 10}}
IMAGENET = {"data": {"_target_": "zf_lightning.data.ImageNetDataModule", "num_classes": 1000}}
# What the Table 3 note says of real runs, and must not say of synthetic ones.
IMAGENET_NOTE = "ImageNet 2012 validation set"


def composed(app: str, overrides: list[str]):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(app, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize(
    "app, overrides, group, tags",
    [
        # the sweep's group and tags win over debug/smoke's in Hydra's defaults order: the mark comes after
        ("train", ["+sweep=table3", "debug=smoke"], "table3-smoke", ["imagenet", "table3", "smoke"]),
        ("train", ["+sweep=table2", "debug=smoke"], "table2-smoke", ["imagenet", "table2", "smoke"]),
        # debug=smoke on real data is still not the paper's run (1/8 widths, one epoch)
        ("train", ["+sweep=table3", "debug=smoke", "data=imagenet"], "table3-smoke", ["imagenet", "table3", "smoke"]),
        # a sweep on synthetic data without debug=smoke
        ("train", ["+sweep=table3", "data=synthetic"], "table3-smoke", ["imagenet", "table3", "smoke"]),
        # the quickstart is on synthetic data: apart from real runs of the same default group (`train`)
        ("train", [], "train-smoke", ["quickstart", "smoke"]),
        ("train", ["experiment=imagenet", "debug=smoke"], "train-smoke", ["imagenet", "smoke"]),
        ("eval", ["ckpt_path=x.ckpt"], "eval-smoke", ["smoke"]),
    ],
)
def test_smoke_and_synthetic_runs_get_the_smoke_group_and_tag_whatever_the_sweep_sets(app, overrides, group, tags):
    cfg = composed(app, overrides)
    assert mark_smoke_run(cfg) is True
    assert (cfg.group, list(cfg.tags)) == (group, tags)
    assert mark_smoke_run(cfg) and cfg.group == group and list(cfg.tags) == tags  # once only
    if "wandb" in cfg.logger:  # what the W&B run gets
        assert cfg.logger.wandb.group == group and list(cfg.logger.wandb.tags) == tags


@pytest.mark.parametrize(
    "app, overrides, group",
    [
        ("train", ["+sweep=table3"], "table3"),
        ("train", ["experiment=imagenet"], "train"),
        ("train", ["+sweep=table4", "model.transfer.checkpoint=x.ckpt"], "table4"),
        ("eval", ["ckpt_path=x.ckpt", "data=imagenet"], "eval"),
    ],
)
def test_runs_on_real_data_keep_their_group(app, overrides, group):
    cfg = composed(app, overrides)
    tags = list(cfg.tags)
    assert mark_smoke_run(cfg) is False and cfg.group == group and list(cfg.tags) == tags and "smoke" not in tags


@pytest.mark.slow
def test_a_smoke_run_of_a_sweep_row_has_the_smoke_group_in_summary_json_and_in_its_wandb_run(tmp_path):
    from zf_lightning.cli.train import train

    out = tmp_path / "run"
    cfg = compose_config(
        "train",
        out,
        ["+sweep=table3", "debug=smoke", "model=zfnet", "data.train_per_class=4", "data.val_per_class=2"],
    )
    summary = train(cfg)  # default loggers: CSV and W&B, offline
    on_disk = json.loads((out / "summary.json").read_text())
    for where in (summary, on_disk):
        assert where["group"] == where["config"]["group"] == "table3-smoke"
        assert where["tags"] == ["imagenet", "table3", "smoke"] and where["config"]["smoke"] is True
    written = wandb_run_bytes(out, b"table3-smoke")
    assert b"table3-smoke" in written and b"smoke" in written

    # zf-tables reads the real groups only: the smoke run fills no table, and it says how to build its table
    assert main([str(out), "--out", str(tmp_path / "tables")]) == 2
    assert not (tmp_path / "tables").exists()


def write_killed_job(job_dir: Path, *, model: str, data: str, smoke: bool) -> Path:
    """A job of `+sweep=table3` killed before summary.json: Hydra's config still says table3."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(
        f"task_name: train\nrun_name: {model}\ngroup: table3\ntags: [imagenet, table3]\nseed: 12345\n"
        f"smoke: {str(smoke).lower()}\ndata:\n  _target_: {data}\n"
    )
    return job_dir


def test_a_killed_smoke_job_is_placed_in_the_smoke_group_too(tmp_path):
    synthetic, imagenet = "zf_lightning.data.SyntheticDataModule", "zf_lightning.data.ImageNetDataModule"
    write_killed_job(tmp_path / "synthetic" / "0", model="zfnet", data=synthetic, smoke=False)
    write_killed_job(tmp_path / "debug_smoke" / "0", model="zfnet", data=imagenet, smoke=True)
    write_killed_job(tmp_path / "real" / "0", model="zfnet", data=imagenet, smoke=False)
    assert [record.group for record in find_runs([tmp_path])] == ["table3-smoke", "table3", "table3-smoke"]
    assert build_tables(find_runs([tmp_path / "synthetic"])) == {}
    table = build_tables(find_runs([tmp_path / "synthetic"]), smoke=True)["table3"]
    assert table.cell("zfnet", "val_top1").status == "incomplete"


def smoke_sweep(root: Path, group: str = "table3-smoke", rows: list[str] = TABLE3_ROWS) -> Path:
    """Table 3's jobs on synthetic data, as `zf-train -m +sweep=table3 debug=smoke` leaves them."""
    for job, model in enumerate(rows):
        write_job(root / str(job), group=group, run_name=model, config=SYNTHETIC, **imagenet_errors(job))
    return root


def test_zf_tables_reads_smoke_groups_only_with_smoke_and_labels_them_not_comparable(tmp_path, capsys):
    sweep, out = smoke_sweep(tmp_path / "sweep"), tmp_path / "tables"
    assert main([str(sweep), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "12 are in the smoke groups (table3-smoke): zf-tables with --smoke builds their tables" in error
    assert not out.exists()

    assert main([str(sweep), "--out", str(out), "--smoke"]) == 0
    markdown = (out / "table3.md").read_text()
    heading, _, data_line = markdown.splitlines()[:3]
    assert heading.endswith("[ours: smoke runs, synthetic data]")
    assert data_line == (
        "Data of our runs: synthetic data (12 runs), smoke runs (group table3-smoke): not comparable to the paper "
        "(its numbers and Δ are shown to check the pipeline only)."
    )
    assert IMAGENET_NOTE not in markdown  # not presented as the paper's ImageNet numbers
    assert (
        r"\caption{Table 3: ImageNet 2012 classification error rates (\%) with architectural changes [ours: smoke"
        in (out / "table3.tex").read_text()
    )
    # the cells are still filled, beside the paper's numbers: the pipeline is what a smoke run checks
    cells = pd.read_csv(out / "table3.csv")
    assert (
        cells["ours_mean"].notna().all() and (cells.loc[cells.row == "zfnet", "paper_mean"] == [33.1, 38.4, 16.5]).all()
    )


def test_the_caption_names_the_dataset_of_real_runs(tmp_path):
    for job, model in enumerate(["alexnet", "zfnet"]):
        write_job(
            tmp_path / "imagenet" / str(job), group="table2", run_name=model, config=IMAGENET, **imagenet_errors(job)
        )
    write_job(
        tmp_path / "caltech" / "0",
        group="table4",
        config={
            "model": {"transfer": {"mode": "pretrained"}},
            "data": {"dataset": "caltech101", "train_per_class": 15},
        },
        test={"test/mean_class_acc": 80.0},
    )
    write_job(tmp_path / "old" / "0", group="table3", run_name="zfnet", config={}, **imagenet_errors(0))
    tables = build_tables(find_runs([tmp_path]))
    lines = {name: to_markdown(table).splitlines() for name, table in tables.items()}
    assert lines["table2"][0] == "## Table 2: ImageNet 2012 classification error rates (%)"
    assert lines["table2"][2] == "Data of our runs: ImageNet 2012 (2 runs)."
    assert lines["table4"][2] == "Data of our runs: Caltech-101 (1 run)."
    assert lines["table3"][2] == "Data of our runs: dataset not recorded (1 run)."  # a config without data
    assert all(table.comparable for table in tables.values())
    assert IMAGENET_NOTE in "\n".join(lines["table2"])  # the note on how the real runs were tested stays


def test_an_analysis_whose_data_config_only_describes_the_checkpoint_is_not_a_synthetic_run(tmp_path):
    # zf-analyze correspondence on the user's images: `data` (synthetic by default) only gives classes and crop size
    job = write_job(tmp_path / "0", group="correspondence", config=SYNTHETIC)
    summary = json.loads((job / "summary.json").read_text())
    summary["task_name"] = "correspondence"
    summary["table1"] = {part: {"layer5": {"mean": 0.07, "std": 0.01}} for part in ("right_eye", "nose")}
    (job / "summary.json").write_text(json.dumps(summary))
    table = build_tables(find_runs([tmp_path]))["table1"]
    assert table.comparable and table.cell("nose", "5").mean == 0.07
    assert to_markdown(table).splitlines()[2] == "Data of our runs: dataset not recorded (1 run)."


def test_a_table_mixing_synthetic_and_real_runs_is_refused_naming_both_unless_one_kind_is_kept(tmp_path, capsys):
    real = write_job(tmp_path / "real" / "0", group="table3", run_name="zfnet", config=IMAGENET, **imagenet_errors(0))
    # a synthetic run in the real group: made before smoke groups existed, or synced from elsewhere
    synthetic = write_job(
        tmp_path / "old_smoke" / "0", group="table3", run_name="alexnet", config=SYNTHETIC, **imagenet_errors(5)
    )
    out = tmp_path / "tables"
    assert main([str(tmp_path / "real"), str(tmp_path / "old_smoke"), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(
        f"zf-tables: error: table3 mixes 1 run(s) on synthetic data ({synthetic} [synthetic]) with 1 run(s) on real "
        f"data ({real} [imagenet])"
    )
    assert "--data real" in error and not out.exists()

    assert main([str(tmp_path), "--out", str(out), "--data", "real"]) == 0
    cells = pd.read_csv(out / "table3.csv").set_index(["row", "column"])
    assert cells.loc[("zfnet", "val_top1"), "ours_mean"] == 40.0 and cells.loc[("alexnet", "val_top1"), "n"] == 0
    assert "Data of our runs: ImageNet 2012 (1 run)." in (out / "table3.md").read_text()

    assert main([str(tmp_path), "--out", str(out), "--data", "synthetic"]) == 0
    markdown = (out / "table3.md").read_text()
    assert "Data of our runs: synthetic data (1 run): not comparable to the paper" in markdown
    assert "[ours: synthetic data]" in markdown.splitlines()[0] and IMAGENET_NOTE not in markdown
    assert (
        pd.read_csv(out / "table3.csv").set_index(["row", "column"]).loc[("alexnet", "val_top1"), "ours_mean"] == 45.0
    )


def test_real_and_smoke_groups_side_by_side_each_build_their_own_table(tmp_path, capsys):
    write_job(tmp_path / "real" / "0", group="table3", run_name="zfnet", config=IMAGENET, **imagenet_errors(0))
    smoke_sweep(tmp_path / "smoke", rows=["zfnet"])
    out = tmp_path / "tables"
    assert main([str(tmp_path), "--out", str(out)]) == 0
    assert "Data of our runs: ImageNet 2012 (1 run)." in (out / "table3.md").read_text()
    assert "1 runs belong to no table" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(out), "--smoke"]) == 0
    assert "synthetic data (1 run), smoke runs (group table3-smoke)" in (out / "table3.md").read_text()


def test_wandb_runs_of_the_smoke_groups_are_read_with_smoke(tmp_path, monkeypatch):
    import sys
    import types

    queried = []

    class FakeApi:
        def runs(self, path, filters=None):
            queried.append(filters["group"])
            return []

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    assert main(["--wandb", "me/zf", "--out", str(tmp_path)]) == 2  # no runs
    assert "table3" in queried and not any(group.endswith("-smoke") for group in queried)
    queried.clear()
    assert main(["--wandb", "me/zf", "--out", str(tmp_path), "--smoke"]) == 2
    assert "table3-smoke" in queried and all(group.endswith("-smoke") for group in queried)


def test_log_wandb_logs_each_table_and_its_markdown_to_an_offline_run_of_its_own(tmp_path, capsys):
    for job, model in enumerate(["alexnet", "zfnet"]):
        write_job(
            tmp_path / "sweep" / str(job), group="table2", run_name=model, config=IMAGENET, **imagenet_errors(job)
        )
    out = tmp_path / "tables"
    assert main([str(tmp_path / "sweep"), "--out", str(out), "--log-wandb"]) == 0
    assert "[W&B: the tables logged to zf-lightning/" in capsys.readouterr().out
    markdown = (out / "table2.md").read_text()

    written = wandb_run_bytes(out, b"table2/markdown")
    for expected in (b"table2/markdown", b"tables", b"zf-lightning", b"table-file"):  # group and job_type "tables"
        assert expected in written, expected
    assert json.dumps(markdown, ensure_ascii=False).encode() in written  # the Markdown as written, in the summary
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (table_file,) = (run_dir / "files" / "media" / "table").glob("table2_*.table.json")
    logged = json.loads(table_file.read_text())
    assert logged["columns"] == ["row", "column", "ours", "paper", "difference", "n", "status"]
    by_cell = {(row, column): rest for row, column, *rest in logged["data"]}
    assert by_cell[("1 convnet as per Fig. 3 [zfnet]", "Val Top-1")] == [41.0, 38.4, pytest.approx(2.6), 1, "ok"]
    assert by_cell[("1 convnet as per Fig. 3 [zfnet]", "Test Top-5")][1:] == [None, None, 0, "n/a"]
    assert by_cell[("Gunji et al., 2012 (reference, not run)", "Test Top-5")] == [None, 26.2, None, 0, "reference"]
    assert len(logged["data"]) == 10 * 3  # every row of Table 2, the paper's references included


def test_log_wandb_puts_tables_of_smoke_runs_in_the_tables_smoke_group(tmp_path):
    sweep, out = smoke_sweep(tmp_path / "sweep", rows=["zfnet"]), tmp_path / "tables"
    assert main([str(sweep), "--out", str(out), "--smoke", "--log-wandb"]) == 0
    written = wandb_run_bytes(out, b"tables-smoke")
    assert b"tables-smoke" in written and b"not comparable to the paper" in written

"""zf-tables on generated run directories: mean ± std per cell beside the paper's numbers, failed and
killed jobs marked (never dropped), the Markdown/LaTeX/CSV files, the command line, and W&B as a source."""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from zf_lightning.cli.tables import main
from zf_lightning.config import config_dir
from zf_lightning.tables.build import build_tables, load_paper, parse_paper_value, to_latex, to_markdown
from zf_lightning.tables.results import find_runs

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


def write_job(
    job_dir: Path,
    *,
    group: str,
    config: dict,
    run_name: str = "run",
    test: dict | None = None,
    train: dict | None = None,
    status: str = "completed",
    error: str | None = None,
) -> Path:
    """A job directory as zf-train leaves it: .hydra/ and summary.json."""
    (job_dir / ".hydra").mkdir(parents=True)
    summary = {
        "task_name": "train",
        "run_name": run_name,
        "group": group,
        "tags": [],
        "output_dir": str(job_dir),
        "overrides": [],
        "config": {"seed": 12345, "group": group, "run_name": run_name, **config},
        "status": status,
        "duration_s": 1.0,
    }
    if status == "completed":
        summary |= {"train": train or {}, "test": test or {}, "epochs": 1}
    else:
        summary |= {"error": error, "traceback": "Traceback ..."}
    (job_dir / "summary.json").write_text(json.dumps(summary))
    return job_dir


def write_killed_job(job_dir: Path, *, group: str, model: str) -> Path:
    """A job killed before it wrote summary.json: only Hydra's copy of its config, run_name still an
    interpolation of Hydra's runtime config, as a sweep sets it."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "config.yaml").write_text(
        f"task_name: train\nrun_name: ${{hydra:runtime.choices.model}}\ngroup: {group}\nseed: 12345\n"
        "paths:\n  output_dir: ${hydra:runtime.output_dir}\n  log_dir: ${oc.env:ZF_LOG_DIR,logs}\n"
    )
    (job_dir / ".hydra" / "hydra.yaml").write_text(
        f"hydra:\n  run:\n    dir: logs/${{now:%Y}}\n  runtime:\n    output_dir: {job_dir}\n    choices:\n      "
        f"model: {model}\n"
    )
    return job_dir


def imagenet_errors(row: int) -> dict[str, dict[str, float]]:
    return {
        "train": {"train/top1_err": 30.0 + row},
        "test": {"test/top1_err": 40.0 + row, "test/top5_err": 18.0 + row / 10},
    }


def caltech_accuracy(mode: str, n: int, split: int) -> float:
    return {"pretrained": 80.0, "scratch": 20.0}[mode] + n / 10 + [0.3, -1.1, 0.8, 2.0, -0.6][split]


@pytest.fixture
def table4_sweep(tmp_path) -> Path:
    """The Table 4 sweep: 2 modes x 2 training-set sizes x 5 splits, one job each."""
    sweep, job = tmp_path / "table4_sweep", 0
    for mode in ("pretrained", "scratch"):
        for n in (15, 30):
            for split in range(5):
                config = {
                    "model": {"transfer": {"mode": mode}},
                    "data": {"dataset": "caltech101", "train_per_class": n, "split_seed": split},
                }
                write_job(
                    sweep / str(job),
                    group="table4",
                    config=config,
                    run_name=f"caltech101_{mode}_n{n}_split{split}",
                    test={"test/mean_class_acc": caltech_accuracy(mode, n, split), "test/top1_err": 1.0},
                )
                job += 1
    return sweep


def test_table4_mean_and_sample_std_over_splits_beside_the_papers_numbers(table4_sweep):
    table = build_tables(find_runs([table4_sweep]))["table4"]
    for mode, n, paper_mean, paper_std in [
        ("pretrained", 15, 83.8, 0.5),
        ("pretrained", 30, 86.5, 0.5),
        ("scratch", 15, 22.8, 1.5),
        ("scratch", 30, 46.5, 1.7),
    ]:
        values = [caltech_accuracy(mode, n, split) for split in range(5)]
        mean = sum(values) / 5
        sample_std = math.sqrt(sum((v - mean) ** 2 for v in values) / (5 - 1))  # ddof=1
        cell = table.cell(mode, str(n))
        assert cell.status == "ok" and cell.n == 5
        assert cell.mean == pytest.approx(mean) and cell.std == pytest.approx(sample_std)
        assert (cell.paper.mean, cell.paper.std) == (paper_mean, paper_std)
        assert cell.diff == pytest.approx(mean - paper_mean)
        assert cell.ours() == f"{mean:.1f} ± {sample_std:.1f} (n=5)"
    # The other papers' rows with their numbers, marked as references; no finetune row (no sweep runs it).
    assert [row.key for row in table.rows] == ["bo2013", "jianchao2009", "scratch", "pretrained"]
    assert table.cell("bo2013", "30").status == "reference" and str(table.cell("bo2013", "30").paper) == "81.4 ± 0.33"
    assert table.cell("bo2013", "15").paper is None and table.problems() == []
    markdown = to_markdown(table)
    assert "| ImageNet-pretrained convnet [pretrained] | " in markdown and "83.8 ± 0.5" in markdown
    assert "Bo et al., 2013 (reference, not run)" in markdown


def test_table3_every_row_present_failed_and_killed_jobs_marked_and_listed(tmp_path):
    sweep = tmp_path / "table3_sweep"
    for job, model in enumerate(TABLE3_ROWS):
        if model == "alexnet_fc2048":
            write_job(
                sweep / str(job),
                group="table3",
                run_name=model,
                config={},
                status="failed",
                error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
            )
        elif model == "zfnet_fc8192":
            write_killed_job(sweep / str(job), group="table3", model=model)
        else:
            write_job(sweep / str(job), group="table3", run_name=model, config={}, **imagenet_errors(job))

    table = build_tables(find_runs([sweep]))["table3"]
    assert [row.key for row in table.rows] == TABLE3_ROWS
    frame = table.frame()
    assert len(frame) == 12 * 3
    statuses = frame.groupby("row")["status"].agg(set).to_dict()
    assert statuses.pop("alexnet_fc2048") == {"failed"} and statuses.pop("zfnet_fc8192") == {"incomplete"}
    assert all(status == {"ok"} for status in statuses.values())
    assert frame["paper_mean"].notna().all()  # the paper has every number of Table 3
    assert table.cell("zfnet", "val_top1").mean == 40.0 + TABLE3_ROWS.index("zfnet")
    assert table.cell("zfnet", "val_top1").paper.mean == 38.4
    assert (
        table.cell("alexnet_fc2048", "val_top5").ours()
        == "failed (RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB)"
    )
    assert table.cell("zfnet_fc8192", "train_top1").ours() == "incomplete (no summary.json)"

    assert table.problems() == [  # each run once, under the table
        f"failed: Adjust layers 6,7: 2048 units [alexnet_fc2048]: {sweep / '5'}: RuntimeError: CUDA out of memory. "
        f"Tried to allocate 2.00 GiB",
        f"incomplete: Adjust layers 6,7: 8192 units [zfnet_fc8192]: {sweep / '9'}: no summary.json: killed, or still "
        f"running",
    ]
    markdown = to_markdown(table)
    assert "Not complete (2):" in markdown and markdown.count("| failed (RuntimeError: CUDA out of memory") == 3


def test_a_retried_job_replaces_its_failure_and_a_missing_row_is_marked(tmp_path):
    first, retry = tmp_path / "first", tmp_path / "retry"
    write_job(
        first / "0", group="table2", run_name="alexnet", config={}, test={"test/top1_err": 41.0, "test/top5_err": 18.5}
    )
    write_job(first / "1", group="table2", run_name="zfnet", config={}, status="failed", error="ValueError: bad")
    write_job(
        retry / "0", group="table2", run_name="zfnet", config={}, test={"test/top1_err": 39.0, "test/top5_err": 17.0}
    )
    table = build_tables(find_runs([first, retry]))["table2"]
    assert table.cell("zfnet", "val_top1").status == "ok" and table.cell("zfnet", "val_top1").n == 1
    assert table.cell("zfnet", "val_top1").ours() == "39.0"  # n=1: no ±
    assert table.cell("zfnet", "test_top5").status == "n/a"  # the ImageNet test set is not ours to evaluate
    assert table.cell("zfnet_conv512_1024_512", "val_top1").ours() == "missing"
    assert table.problems() == [
        "missing: 1 convnet as per Fig. 3 but with layers 3,4,5: 512,1024,512 maps (b) [zfnet_conv512_1024_512]: no "
        "runs"
    ]
    # The paper's ensembles and other papers' rows are there, with their numbers.
    assert (
        table.cell("ensemble_ab", "test_top5").status == "reference"
        and table.cell("ensemble_ab", "test_top5").paper.mean == 14.8
    )


def test_feature_analysis_rows_are_metrics_and_columns_datasets(tmp_path):
    sweep = tmp_path / "features"
    for job, (dataset, n, split) in enumerate(
        [("caltech101", 30, 0), ("caltech101", 30, 1), ("caltech256", 60, 0), ("caltech101", 15, 0)]
    ):
        test = {
            f"test/{row}": 50.0 + job
            for row in ("SVM(1)", "SVM(2)", "SVM(3)", "SVM(4)", "SVM(5)", "SVM(7)", "Softmax(5)", "Softmax(7)")
        }
        write_job(
            sweep / str(job),
            group="feature_analysis",
            config={"data": {"dataset": dataset, "train_per_class": n, "split_seed": split}},
            test=test,
        )
    table = build_tables(find_runs([sweep]))["feature_analysis"]
    cell = table.cell("SVM(7)", "caltech101/30")
    assert (cell.n, cell.mean, cell.paper.mean, cell.paper.std) == (2, 50.5, 85.5, 0.4)
    assert table.cell("Softmax(7)", "caltech256/60").ours() == "52.0"
    # A run the paper has no column for is shown, not dropped.
    assert table.columns[-1].key == "caltech101/15" and table.cell("SVM(1)", "caltech101/15").mean == 53.0


def test_cli_writes_markdown_latex_and_csv_and_prints_the_markdown(table4_sweep, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main([str(table4_sweep), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["table4.csv", "table4.md", "table4.tex"]
    printed = capsys.readouterr().out
    assert printed.startswith("## Table 4: Caltech-101") and (out / "table4.md").read_text() in printed

    frame = pd.read_csv(out / "table4.csv")
    assert list(frame.columns) == [
        "table",
        "row",
        "row_label",
        "reference",
        "column",
        "column_label",
        "metric",
        "status",
        "n",
        "n_failed",
        "ours_mean",
        "ours_std",
        "paper_mean",
        "paper_std",
        "ours_minus_paper",
        "ours",
        "paper",
        "runs",
    ]
    pretrained_30 = frame[(frame.row == "pretrained") & (frame.column == 30)].iloc[0]
    values = [caltech_accuracy("pretrained", 30, split) for split in range(5)]
    assert pretrained_30.ours_mean == pytest.approx(np.mean(values)) and pretrained_30.ours_std == pytest.approx(
        np.std(values, ddof=1)
    )
    assert pretrained_30.paper_mean == 86.5 and pretrained_30.ours_minus_paper == pytest.approx(np.mean(values) - 86.5)

    latex = (out / "table4.tex").read_text()
    assert r"\begin{tabular}" in latex and r"83.8 $\pm$ 0.5" in latex and r"\label{tab:table4}" in latex
    # The same runs give the same files: a second run overwrites them.
    assert (
        main([str(table4_sweep), "--out", str(out)]) == 0 and (out / "table4.md").read_text() in capsys.readouterr().out
    )


def test_cli_exit_status_2_for_a_missing_path_or_no_runs_and_writes_nothing(table4_sweep, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main([str(table4_sweep), str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such file or directory" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no runs" in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2


class FakeWandbRun:
    def __init__(self, name, group, state, config, summary):
        self.name, self.group, self.state, self.config, self.summary = name, group, state, config, summary
        self.path, self.created_at = ["me", "zf", name], "2024-05-01T12:00:00Z"


def test_wandb_runs_are_read_through_the_api_into_the_same_tables(table4_sweep, tmp_path, monkeypatch, capsys):
    runs = [
        FakeWandbRun(
            "voc_pre",
            "table6",
            "finished",
            {"model": {"transfer": {"mode": "pretrained"}, "task": "multilabel_softmax"}, "seed": 1},
            {"test/mAP": 70.0, **{f"test/ap_class{i:02d}": 60.0 + i for i in range(20)}, "train/loss": 0.1},
        ),
        # A logger that flattens nested configs with "/".
        FakeWandbRun(
            "voc_scratch",
            "table6",
            "crashed",
            {"model/transfer/mode": "scratch", "model/task": "multilabel_softmax", "seed": 1},
            {},
        ),
        FakeWandbRun("other", "table6", "finished", {"model": {"transfer": {"mode": "pretrained"}}, "seed": 1}, {}),
    ]
    queries = []

    class FakeApi:
        def runs(self, path, filters=None):
            queries.append((path, filters))
            return [run for run in runs[:2] if run.group == filters["group"]]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    out = tmp_path / "tables"
    assert main(["--wandb", "me/zf", "--out", str(out)]) == 0
    assert ("me/zf", {"group": "table6"}) in queries and len(queries) == len(load_paper())
    frame = pd.read_csv(out / "table6.csv")
    pretrained = frame[frame.row == "pretrained/multilabel_softmax"].set_index("column")
    assert pretrained.loc["mean", "ours_mean"] == 70.0 and pretrained.loc["mean", "paper_mean"] == 79.0
    assert pretrained.loc["cow", "ours_mean"] == 69.0 and pretrained.loc["cow", "paper_mean"] == 74.4
    scratch = frame[frame.row == "scratch/multilabel_softmax"]
    assert set(scratch.status) == {"failed"} and scratch.ours.str.contains("W&B run state 'crashed'").all()
    assert "VOC 2012 val" in (out / "table6.md").read_text()  # ours and the paper's are on different splits
    # Local runs and W&B runs together.
    assert main([str(table4_sweep), "--wandb", "me/zf", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"table4.csv", "table6.csv"}


def _sweep_axis(name: str, axis: str) -> list[str]:
    params = yaml.safe_load((Path(config_dir()) / "sweep" / f"{name}.yaml").read_text())["hydra"]["sweeper"]["params"]
    return [value.strip() for value in str(params[axis]).split(",")]


def test_paper_yaml_has_every_row_and_column_the_sweeps_produce():
    from zf_lightning.transfer.feature_analysis import PAPER_ROWS, row_name

    specs = load_paper()
    run_rows = {name: [row.key for row in spec.rows if not row.reference] for name, spec in specs.items()}
    columns = {name: [column.key for column in spec.columns] for name, spec in specs.items()}
    not_in_table3 = {"alexnet_grouped"}  # Krizhevsky's two groups; Table 3 is the paper's one-tower replication
    models = sorted({path.stem for path in (Path(config_dir()) / "model").glob("*.yaml")} - not_in_table3)
    assert sorted(run_rows["table3"]) == models == sorted(TABLE3_ROWS)
    assert run_rows["table2"] == ["alexnet", "zfnet", "zfnet_conv512_1024_512"]
    for name in ("table2", "table3"):
        if (Path(config_dir()) / "sweep" / f"{name}.yaml").exists():
            assert set(_sweep_axis(name, "model")) == set(run_rows[name])
    for name in ("table4", "table5"):
        assert set(_sweep_axis(name, "model.transfer.mode")) <= set(run_rows[name])
    table6 = {
        f"{m}/{t}" for m in _sweep_axis("table6", "model.transfer.mode") for t in _sweep_axis("table6", "model.task")
    }
    assert table6 <= set(run_rows["table6"])
    for name in ("table4", "table5"):
        assert columns[name] == _sweep_axis(name, "data.train_per_class")
    assert run_rows["feature_analysis"] == [row_name(*row) for row in PAPER_ROWS]
    assert columns["feature_analysis"] == ["caltech101/30", "caltech256/60"]
    # Every table of the paper is there, each number parsed; Ours' 20 APs of Table 6 average to its printed mean.
    assert list(specs) == ["table1", "table2", "table3", "table4", "table5", "table6", "feature_analysis"]
    assert [row.key for row in specs["table1"].rows] == ["right_eye", "left_eye", "nose", "random"]
    assert specs["table1"].rows[3].paper["5"] == parse_paper_value("0.107 ± 0.017")
    ours = [specs["table6"].rows[2].paper[column.key].mean for column in specs["table6"].columns]
    assert round(np.mean(ours[:20]), 1) == ours[20] == 79.0
    assert specs["table3"].rows[7].paper == {
        "train_top1": parse_paper_value(33.1),
        "val_top1": parse_paper_value(38.4),
        "val_top5": parse_paper_value(16.5),
    }
    assert parse_paper_value("81.4 ± 0.33").std == 0.33 and parse_paper_value(None) is None


def test_latex_escapes_what_runs_can_contain(tmp_path):
    write_job(
        tmp_path / "0",
        group="table2",
        run_name="zfnet",
        config={},
        status="failed",
        error="KeyError: 'a_b' & 50% | {x}",
    )
    latex = to_latex(build_tables(find_runs([tmp_path]))["table2"])
    assert r"KeyError: 'a\_b' \& 50\% \textbar{} \{x\}" in latex

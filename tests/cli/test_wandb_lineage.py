"""What a user comparing runs finds in W&B, read back from the offline run files: best-value summaries, the
run's status and best checkpoint, the checkpoints as an artifact, zf-eval's own run, and every run that reads a
checkpoint naming the training run and artifact it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.configs import TINY, compose_config
from tests.helpers.wandb_records import config_of, of_type, offline_run_file, summary_of, wandb_records
from zf_lightning.cli.analyze import occlusion
from zf_lightning.cli.evaluate import evaluate
from zf_lightning.cli.train import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("wandb_train") / "run"
    summary = train(compose_config("train", out, [*TINY, "trainer.max_epochs=2", "wandb_checkpoints=true"]))
    return out, summary


def test_a_training_run_keeps_best_values_status_best_checkpoint_and_its_checkpoints_as_an_artifact(trained):
    out, summary = trained
    records = wandb_records(offline_run_file(out))
    defined = {
        (metric.name, field)
        for metric in of_type(records, "metric")
        for field in ("min", "max", "last")
        if getattr(metric.summary, field)
    }
    for stage in ("val", "test"):
        assert {
            (f"{stage}/top1_err", "min"),
            (f"{stage}/top1_err", "last"),
            (f"{stage}/mean_class_acc", "max"),
        } <= defined
    logged = summary_of(records)
    history = [
        json.loads(item.value_json)
        for h in of_type(records, "history")
        for item in h.item
        if "/".join(item.nested_key) == "val/top1_err" or item.key == "val/top1_err"
    ]
    assert len(history) == 2 and logged["val/top1_err"]["min"] == min(history)  # the best, not the last
    assert logged["val/top1_err"]["last"] == history[-1]
    assert logged["status"] == "completed"
    assert logged["best"]["checkpoint"] == summary["best"]["checkpoint"] and logged["best"]["epoch"] in (1, 2)
    (artifact,) = of_type(records, "artifact")
    run_id = (out / "wandb_run_id.txt").read_text()
    assert artifact.name == f"model-{run_id}" and artifact.type == "model"
    assert set(artifact.aliases) >= {"best", "latest"}
    assert {entry.path for entry in artifact.manifest.contents} == {"best.ckpt", "last.ckpt"}
    assert json.loads(artifact.metadata)["best"]["epoch"] == summary["best"]["epoch"]


def test_zf_eval_and_the_analyses_log_to_wandb_naming_the_training_run_they_read(trained, tmp_path):
    out, summary = trained
    run_id = (out / "wandb_run_id.txt").read_text()
    checkpoint = summary["best"]["checkpoint"]
    lineage = {"checkpoint": checkpoint, "training_run": run_id, "artifact": f"model-{run_id}"}

    eval_cfg = compose_config("eval", tmp_path / "eval", [f"ckpt_path={checkpoint}", "data.num_workers=0"])
    evaluated = evaluate(eval_cfg)
    records = wandb_records(offline_run_file(tmp_path / "eval"))
    assert config_of(records)["lineage"] == [lineage]
    assert summary_of(records)["test/top1_err"]["last"] == pytest.approx(evaluated["test"]["test/top1_err"])
    assert summary_of(records)["status"] == "completed"

    cfg = compose_config(
        "analyze_occlusion",
        tmp_path / "occlusion",
        [f"ckpt_path={checkpoint}", "images.max_images=1", "occlusion.top_projections=0", "occlusion.stride=16"],
    )
    occlusion(cfg)
    assert config_of(wandb_records(offline_run_file(tmp_path / "occlusion")))["lineage"] == [lineage]


def test_summary_and_wandb_config_record_the_package_versions_and_the_git_commit(trained):
    import subprocess
    from importlib import metadata

    out, summary = trained
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert summary["git_commit"].removesuffix("+dirty") == head
    assert summary["versions"]["torch"] == metadata.version("torch")
    assert summary["versions"]["lightning"] == metadata.version("lightning")
    config = config_of(wandb_records(offline_run_file(out)))
    assert config["versions"] == summary["versions"] and config["git_commit"] == summary["git_commit"]

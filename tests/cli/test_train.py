"""zf-train and zf-eval through the real composed configs: runs, outputs on disk, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.errors import InstantiationException

from tests.helpers.configs import TINY, cli_env, compose_config
from zf_lightning.callbacks.filter_drift import filter_correlations
from zf_lightning.cli.evaluate import evaluate
from zf_lightning.cli.train import train
from zf_lightning.config.checker import ConfigError


def test_fast_dev_run_of_the_default_config(compose_train, tmp_path):
    summary = train(compose_train(["debug=fdr", "logger=csv"]))
    assert summary["status"] == "completed"
    assert set(summary["test"]) == {"test/loss", "test/top1_err", "test/top5_err", "test/mean_class_acc"}
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["config"]["model"]["net"]["arch"] == "zfnet"


LEARNING_RUN = [
    "model.net.width_multiplier=0.25",
    "data.train_per_class=160",
    "data.val_per_class=20",
    "data.test_per_class=10",
    "data.batch_size=32",
    "trainer.max_epochs=4",
]


@pytest.mark.slow
def test_short_synthetic_run_learns_and_writes_csv_wandb_checkpoints_and_summary(compose_train, tmp_path):
    out = tmp_path / "run"
    summary = train(compose_train(LEARNING_RUN))  # default loggers: CSV + W&B offline
    # chance is 90% top-1 error on 10 classes
    assert summary["train"]["val/top1_err"] < 60, summary["train"]
    assert summary["test"]["test/top1_err"] < 60, summary["test"]

    metrics = pd.read_csv(out / "csv" / "metrics.csv")
    val = metrics.dropna(subset=["val/top1_err"])
    assert list(val["epoch"]) == [0, 1, 2, 3]
    assert val["val/top1_err"].iloc[-1] < val["val/top1_err"].iloc[0]
    assert metrics["train/top1_err"].notna().sum() == 4 and metrics["train/top5_err"].notna().sum() == 4

    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and any(name.startswith("epoch") for name in checkpoints)
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)  # plain containers only
    assert last["hyper_parameters"]["net"]["arch"] == "zfnet"
    assert summary["best"]["checkpoint"].startswith(str(out / "checkpoints"))
    # which epoch each number comes from: the best checkpoint's (first minimum of the monitored val error), and
    # the train metrics' (the last epoch)
    first_best = int(val["val/top1_err"].to_numpy().argmin())
    assert summary["best"]["epoch"] == int(val["epoch"].iloc[first_best]) + 1
    assert summary["train_metrics_epoch"] == summary["epochs"] == 4

    (wandb_log,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    written = wandb_log.read_bytes()  # W&B's protobuf log: the strings we sent are stored verbatim
    for expected in [b"val/top1_err", b"train/top5_err", b"filter_rms_radius", b"quickstart", b"zf-lightning"]:
        assert expected in written, expected
    assert (out / "wandb_run_id.txt").read_text() in wandb_log.name

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["test"] == summary["test"]
    # every conv layer's drift from its initialisation, and Fig. 6 of the run's own layer-1 filters at both ends
    drift = on_disk["filter_correlation_with_init"]
    assert sorted(drift) == ["1", "2", "3", "4", "5"] and all(-1.0 <= value < 1.0 for value in drift.values())
    for name in ("filters_layer1_start.png", "filters_layer1_end.png"):
        assert (out / "filters" / name).stat().st_size > 5000

    checkpoint = torch.load(summary["best"]["checkpoint"], weights_only=True)
    assert checkpoint["SyntheticDataModule"]["mean_image"].shape == (3, 72, 72)

    # zf-eval on the best checkpoint, same test data and 10 crops (default data config otherwise, so its
    # own mean image would differ: the checkpoint's is used): the numbers zf-train reported
    eval_cfg = compose_config(
        "eval",
        tmp_path / "eval",
        [f"ckpt_path={summary['best']['checkpoint']}", "data.test_per_class=10", "data.num_workers=0"],
    )
    evaluated = evaluate(eval_cfg)
    assert evaluated["ten_crop"] is True
    for name, value in summary["test"].items():
        assert evaluated["test"][name] == pytest.approx(value, abs=1e-4)
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_the_run(compose_train, tmp_path):
    out = tmp_path / "run"
    first = train(compose_train(["trainer.max_epochs=1", "logger=csv"], out))
    assert first["epochs"] == 1
    initial = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["FilterDrift"]["initial"]
    with pytest.raises(FileExistsError, match="ckpt_path=last"):
        train(compose_train(["trainer.max_epochs=2", "logger=csv"], out))
    resumed = train(compose_train(["trainer.max_epochs=2", "logger=csv", "ckpt_path=last"], out))
    assert resumed["epochs"] == 2
    last = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * 10  # 200 images / batch 20, two epochs: the first was not redone
    epochs = pd.read_csv(out / "csv" / "metrics.csv").dropna(subset=["val/top1_err"])["epoch"]
    assert list(epochs) == [0, 1]  # the first run's metrics are still there
    # the drift is measured from the run's start, not from the weights it resumed with
    kept = last["callbacks"]["FilterDrift"]["initial"]
    assert all(torch.equal(kept[layer], initial[layer]) for layer in initial)
    weight = last["state_dict"]["net.features.0.weight"]
    assert resumed["filter_correlation_with_init"]["1"] == pytest.approx(
        float(filter_correlations(initial["1"], weight).mean()), abs=1e-4
    )


def test_last_checkpoint_is_refreshed_every_epoch_even_without_a_new_best(compose_train, tmp_path):
    # Monitoring "epoch" (mode min) makes epoch 0 the best forever: Lightning's own save_last would
    # then leave last.ckpt at epoch 0.
    out = tmp_path / "run"
    summary = train(
        compose_train(
            ["trainer.max_epochs=2", "logger=csv", "test=false", "callbacks.model_checkpoint.monitor=epoch"], out
        )
    )
    assert Path(summary["best"]["checkpoint"]).name == "epoch000.ckpt"
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2 * 10
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch000.ckpt", "last.ckpt"]


def test_resume_without_a_checkpoint_says_where_it_looked(compose_train, tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"ckpt_path='last': no checkpoint at .*checkpoints \(ckpt_path=last resumes the run in hydra.run.dir",
    ):
        train(compose_train(["ckpt_path=last", "logger=csv"]))


def test_missing_imagenet_root_fails_before_training(compose_train, tmp_path):
    missing = tmp_path / "no-imagenet"
    cfg = compose_config(
        "train", tmp_path / "run", ["experiment=imagenet", f"data.root={missing}", "trainer=cpu", "logger=csv"]
    )
    with pytest.raises(InstantiationException, match=rf"MissingInputError.*{missing}/train/<wnid>/\*\.JPEG"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_impossible_variant_names_the_layer(compose_train, tmp_path):
    # Hydra wraps the model's ValueError in its InstantiationException, message intact
    with pytest.raises(InstantiationException, match=r"zfnet: pool5 \(after conv5\) gets a 1x1 map.*input_size=40"):
        train(compose_train(["data.image_size=48", "data.crop_size=40", "logger=csv"], tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"model.net.removed_layers=\[5\].*allowed values: \[3, 4, 6, 7\]"):
        train(compose_train(["model.net.removed_layers=[5]", "logger=csv"], tmp_path / "b"))


def run_cli(args: list[str], tmp_path: Path, script: str = "zf-train") -> subprocess.CompletedProcess:
    executable = Path(sys.executable).parent / script
    return subprocess.run(
        [str(executable), *args], env=cli_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_two_runs_launched_at_once_from_the_console_script_get_a_directory_each(console_default_runs):
    # Launched at once, as a scheduler would (tests/helpers/console_runs.py): the two still get a directory each.
    runs = console_default_runs.runs
    assert len(runs) == 2  # a second run never reuses the first one's directory
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert (run / ".hydra" / "config.yaml").is_file()
    # and share one mean image in the cache, written whole by whichever finished first
    cached = sorted(path.name for path in console_default_runs.cache.rglob("*") if path.is_file())
    assert len([name for name in cached if name.startswith("mean_image-")]) == 1, cached
    assert not [name for name in cached if name.endswith(".tmp")], cached


@pytest.mark.parametrize(
    "deferred, device",
    [(False, "cpu"), (True, "cpu"), pytest.param(None, "gpu", marks=pytest.mark.cuda)],
    ids=["cpu-check", "deferred-as-on-gpu", "on-cuda"],
)
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(
    compose_train, tmp_path, monkeypatch, deferred, device
):
    from zf_lightning.models import ImageClassifier

    # deferred: read a step later, gradients zeroed; None: the default (deferred on CUDA, at once on a CPU)
    monkeypatch.setattr(ImageClassifier, "defer_finite_check", deferred)
    real_loss = ImageClassifier.loss

    def poisoned(self, logits, labels):
        loss = real_loss(self, logits, labels)
        return loss * float("nan") if self.training and self.current_epoch == 1 and self.global_step == 13 else loss

    monkeypatch.setattr(ImageClassifier, "loss", poisoned)
    cfg = compose_train([f"trainer={device}", "trainer.max_epochs=3", "logger=csv", "test=false"])  # 10 batches/epoch
    with pytest.raises(
        FloatingPointError, match=r"non-finite training loss \(nan\) at global step 13 \(epoch 1, batch 3\)"
    ):
        train(cfg)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["error"].startswith(
        "FloatingPointError: non-finite training loss"
    )


# Tensor calls that read a value back to the host: on a GPU each waits for the device to finish the queued work.
HOST_READS = {
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "nonzero",
    "unique",
    "_unique2",
}


def test_a_training_step_never_makes_the_host_wait_for_the_device(tmp_path, monkeypatch):
    """What a GPU run needs to queue steps ahead: in the default zf-train loop (callbacks, Rich bar, CSV + W&B,
    metrics), no tensor call of a training batch reads a value back, between the loggers' log_every_n_steps.
    Checked on CPU by recording every tensor call of each batch; data loading (in workers on a real run) and the
    deferred loss check's read of a host copy made a step earlier are the allowed exceptions."""
    import traceback

    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
    from torch.overrides import TorchFunctionMode

    from zf_lightning.callbacks import progress
    from zf_lightning.models import ImageClassifier

    allowed = ("torch/utils/data/", "in raise_finished")
    reads: list[list[str]] = []

    class HostReads(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in HOST_READS:
                stack = "".join(traceback.format_stack(limit=40))
                if not any(a in stack for a in allowed):
                    reads[-1].append(
                        f"{name} at "
                        + " < ".join(
                            f"{Path(f.filename).name}:{f.lineno}" for f in traceback.extract_stack(limit=14)[:-1]
                        )
                    )
            return func(*args, **(kwargs or {}))

    advance = _TrainingEpochLoop.advance

    def recorded(self, data_fetcher):
        reads.append([])
        with HostReads():
            return advance(self, data_fetcher)

    monkeypatch.setattr(_TrainingEpochLoop, "advance", recorded)
    monkeypatch.setattr(ImageClassifier, "defer_finite_check", True)  # as on a GPU
    monkeypatch.setattr(
        progress.time, "monotonic", lambda: 0.0
    )  # the bar reads once, then never redraws in this short run
    tiny = [o for o in TINY if o != "~callbacks.progress_bar"]
    cfg = compose_config(
        "train", tmp_path / "run", [*tiny, "trainer.max_epochs=1", "test=false", "trainer.log_every_n_steps=1000"]
    )
    train(cfg)
    assert len(reads) == 10  # one per training batch
    assert reads[1:] == [[]] * 9, reads[1:]  # the first batch's progress-bar read is its only one

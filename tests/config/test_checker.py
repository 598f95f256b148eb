"""Bad configs fail at start-up, naming the key and the allowed values, before any directory exists; the
shipped configs all pass; no secret is written into logged configs or result files."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.helpers.configs import TINY, cli_env, compose_config, run_console_main
from zf_lightning.config import config_dir
from zf_lightning.config.checker import (
    ConfigError,
    ValidateConfig,
    _sweep_jobs,
    config_problems,
    validate_config,
    validate_sweep,
)
from zf_lightning.utils.secrets import REDACTED, redact_secrets


def problems_of(tmp_path: Path, overrides: list[str], name: str = "train") -> list[str]:
    extra = TINY if name == "train" else []
    return config_problems(compose_config(name, tmp_path / "run", [*extra, *overrides]))


# ------------------------------------------------------------------------------------ no false alarms


REQUIRED = {
    **{app: ["ckpt_path=x.ckpt"] for app in ("eval", "features", "visualize_top9")},
    **{app: ["ckpt_path=x.ckpt"] for app in ("analyze_occlusion", "analyze_invariance", "analyze_correspondence")},
    "visualize_filters": ["ckpt_paths=[x.ckpt]"],
}


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("train", []),
        *[("train", [f"experiment={e}"]) for e in ("quickstart", "imagenet", "caltech101", "caltech256", "voc2012")],
        ("train", ["experiment=imagenet", "debug=smoke"]),
        *[("train", [f"debug={d}"]) for d in ("fdr", "limit", "smoke")],
        *[("train", [f"trainer={t}"]) for t in ("cpu", "gpu", "ddp", "ddp_cpu")],
        *[("train", [f"logger={g}"]) for g in ("csv", "wandb", "default")],
        ("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4"]),
        *[("eval", [f"data={d}"]) for d in ("synthetic", "imagenet", "caltech101", "caltech256", "voc2012")],
        *[("features", [f"experiment={e}"]) for e in ("features_caltech101", "features_caltech256")],
        *[
            (app, [])
            for app in (
                "analyze_occlusion",
                "analyze_invariance",
                "analyze_correspondence",
                "visualize_top9",
                "visualize_filters",
            )
        ],
    ],
)
def test_every_shipped_config_passes(name, overrides):
    # composed as Hydra hands it to the callback: with the hydra node, hydra.runtime not filled in yet
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(name, overrides=[*REQUIRED.get(name, []), *overrides], return_hydra_config=True)
    assert config_problems(cfg) == []


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """Jobs such that every value of every sweep axis is in one of them (the full product is slow to compose)."""
    seen: set[str] = set()
    chosen = []
    for job in jobs:
        if set(job) - seen:
            chosen.append(job)
            seen |= set(job)
    return chosen


@pytest.mark.parametrize(
    "primary, overrides",
    [
        ("train", ["+sweep=table2"]),
        ("train", ["+sweep=table2", "debug=smoke"]),
        ("train", ["+sweep=table3"]),
        ("train", ["+sweep=table3", "debug=smoke"]),
        ("train", ["+sweep=table4", "model.transfer.checkpoint=x.ckpt"]),
        ("train", ["+sweep=table5", "model.transfer.checkpoint=x.ckpt"]),
        ("train", ["+sweep=table6", "model.transfer.checkpoint=x.ckpt"]),
        ("features", ["+sweep=feature_analysis", "ckpt_path=x.ckpt"]),
    ],
)
def test_every_value_of_every_sweep_passes(primary, overrides):
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        master = compose(primary, overrides=overrides, return_hydra_config=True)
        jobs = _sweep_jobs(master)
        assert len(jobs) > 1
        loader = GlobalHydra.instance().config_loader()
        for job in covering_jobs(jobs):
            assert config_problems(loader.load_sweep_config(master, job)) == [], job


def test_validate_sweep_composes_each_job_and_names_the_bad_ones():
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):

        def multirun_config(overrides):  # as `zf-train -m ...` composes it
            return GlobalHydra.instance().hydra.compose_config(
                "train", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
            )

        validate_sweep(multirun_config(["+sweep=table6", "model.transfer.checkpoint=x.ckpt"]))
        bad = multirun_config(["+sweep=table6", "model.transfer.checkpoint=x.ckpt", "model.optimizer.lr=0.01,-1"])
        with pytest.raises(ConfigError, match=r"4 of 8 jobs have a bad config") as error:  # 2 modes x 2 heads x 2 lr
            validate_sweep(bad)
    message = str(error.value)
    assert all(f"job #{job} (" in message for job in (1, 3, 5, 7)) and "model.optimizer.lr=-1: must be > 0" in message
    assert all(f"job #{job}" not in message for job in (0, 2, 4, 6))


# ------------------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # misspelled keys, in each group: the key, the closest allowed one, the allowed keys
        (
            ["+data.batch_sise=3"],
            [
                "data.batch_sise: unknown key for zf_lightning.data.SyntheticDataModule",
                "did you mean 'batch_size'",
                "allowed keys: _target_, batch_size, cache_dir",
            ],
        ),
        (
            ["+trainer.max_epoch=3"],
            ["trainer.max_epoch: unknown key for lightning.pytorch.Trainer", "'max_epochs'", "accelerator"],
        ),
        (
            ["+model.net.dropuot=0.1"],
            ["model.net.dropuot: unknown key", "'dropout'", "allowed keys: arch, conv1_init_std, conv_widths"],
        ),
        (
            ["+model.optimizer.momentun=0.5"],
            ["model.optimizer.momentun: unknown key for torch.optim.SGD", "'momentum'", "weight_decay"],
        ),
        (["+model.lr_scheduler.patiense=2"], ["model.lr_scheduler.patiense", "'patience'", "monitor"]),
        (
            ["+callbacks.feature_evolution.snapshot_epoch=[1]"],
            ["callbacks.feature_evolution.snapshot_epoch: unknown key", "'snapshot_epochs'", "maps_per_layer"],
        ),
        (["+callbacks.model_checkpoint.monitr=x"], ["callbacks.model_checkpoint.monitr", "'monitor'"]),
        (
            ["+logger.csv.nam=x"],
            ["logger.csv.nam: unknown key for zf_lightning.callbacks.loggers.ResumableCSVLogger", "'name'", "save_dir"],
        ),
        (
            ["+logger.wandb.ofline=true"],
            ["logger.wandb.ofline", "'offline'", "project"],
        ),  # W&B: wandb.init's options too
        (["+trainr.max_epochs=3"], ["trainr: unknown top-level key (did you mean 'trainer'?)"]),
        # wrong types
        (["trainer.max_epochs=ten"], ["trainer.max_epochs='ten': expected int | null, got str"]),
        (["model.net.fc_widths=[a,b]"], ["model.net.fc_widths=['a', 'b']: expected list[int]"]),
        (["model.net.local_response_norm=1"], ["model.net.local_response_norm=1: expected bool, got int"]),
        (["seed=abc"], ["seed='abc': expected int | null"]),
        # values
        (
            ["model.net.arch=resnet"],
            ["model.net.arch='resnet': must be one of ['alexnet', 'alexnet_grouped', 'zfnet']"],
        ),
        (
            ["model.net.norm_position=middle"],
            ["model.net.norm_position='middle': must be one of ['after_pool', 'before_pool']"],
        ),
        (["model.net.removed_layers=[5]"], ["model.net.removed_layers=[5]", "allowed values: [3, 4, 6, 7]"]),
        (["model.net.width_multiplier=0"], ["model.net.width_multiplier=0: must be > 0"]),
        (["model.net.dropout=1.0"], ["model.net.dropout=1.0: must be in [0, 1)"]),
        (["model.optimizer.lr=-0.01"], ["model.optimizer.lr=-0.01: must be > 0"]),
        (["model.optimizer.weight_decay=-1e-4"], ["model.optimizer.weight_decay=-0.0001: must be >= 0"]),
        (["model.lr_scheduler.factor=2"], ["model.lr_scheduler.factor=2: must be in (0, 1)"]),
        (
            ["+model.task=regression"],
            ["model.task='regression': must be one of ['multiclass', 'multilabel_softmax', 'multilabel']"],
        ),
        (
            ["callbacks.feature_evolution.snapshot_epochs=[5,2,10]"],
            ["callbacks.feature_evolution.snapshot_epochs=[5, 2, 10]: must be a non-empty, strictly increasing"],
        ),
        (["callbacks.feature_evolution.snapshot_epochs=[1,2,2]"], ["snapshot_epochs=[1, 2, 2]", "no duplicates"]),
        (["callbacks.feature_evolution.snapshot_epochs=[0,1]"], ["snapshot_epochs=[0, 1]", "ints >= 1"]),
        (
            ["callbacks.feature_evolution.layers=[1,7]"],
            ["callbacks.feature_evolution.layers=[1, 7]: unknown layer(s) [7]; allowed values: the conv layers 1..5"],
        ),
        (
            ["+callbacks.feature_evolution.method=lrp"],
            ["callbacks.feature_evolution.method='lrp': must be one of ['deconvnet', 'guided', 'gradient']"],
        ),
        (
            ["callbacks.model_checkpoint.mode=best"],
            ["callbacks.model_checkpoint.mode='best': must be one of ['min', 'max']"],
        ),
        (["data.preset=caffe"], ["data.preset='caffe': must be one of ['paper', 'torchvision']"]),
        (["data.batch_size=0"], ["data.batch_size=0: must be >= 1"]),
        (["data.crop_size=80"], ["data.crop_size=80: must not exceed data.image_size=72"]),
        (
            ["callbacks.feature_evolution._target_=zf_lightning.nope.Evolution"],
            ["callbacks.feature_evolution._target_='zf_lightning.nope.Evolution': cannot be imported"],
        ),
        # the global batch across devices
        (
            ["trainer=ddp_cpu", "data.batch_size=21"],
            [
                "data.batch_size=21: the global batch must divide across trainer.devices x trainer.num_nodes = 2 x 1 "
                "= 2 processes",
                "a multiple of 2, e.g. 20 or 22",
            ],
        ),
        (
            ["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2", "data.batch_size=20"],
            ["4 x 2 = 8 processes", "e.g. 16 or 24"],
        ),
        (["trainer=gpu", "trainer.devices=[0,1,2]"], ["data.batch_size=20", "3 x 1 = 3 processes"]),
        (["trainer=gpu", "trainer.devices='0,1,2'"], ["3 x 1 = 3 processes"]),
    ],
)
def test_a_bad_value_is_named_with_what_is_allowed(tmp_path, overrides, expected):
    problems = problems_of(tmp_path, overrides)
    assert len(problems) == 1, problems
    for fragment in expected:
        assert fragment in problems[0], (fragment, problems[0])


@pytest.mark.parametrize(
    "overrides", [["trainer=ddp"], ["trainer=gpu", "trainer.devices=auto"], ["trainer=ddp_cpu", "data.batch_size=22"]]
)
def test_a_batch_that_divides_or_an_unknown_device_count_passes(tmp_path, overrides):
    assert problems_of(tmp_path, overrides) == []  # devices=-1 / auto: the count is only known at run time


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = compose_config(
        "train", tmp_path / "run", [*TINY, "model.optimizer.lr=-1", "+data.batch_sise=3", "trainer.max_epochs=ten"]
    )
    with pytest.raises(ConfigError, match=r"invalid config \(3 problems\)") as error:
        validate_config(cfg)
    assert [p.split(":")[0].split("=")[0] for p in error.value.problems] == [
        "model.optimizer.lr",
        "data.batch_sise",
        "trainer.max_epochs",
    ]
    assert isinstance(error.value, ValueError)


def test_other_apps_check_the_groups_they_have(tmp_path):
    assert (
        "trainer.max_epoch: unknown key"
        in problems_of(tmp_path, ["ckpt_path=x.ckpt", "+trainer.max_epoch=1"], "eval")[0]
    )
    assert (
        "data.batch_sise: unknown key"
        in problems_of(tmp_path, ["ckpt_path=x.ckpt", "+data.batch_sise=1"], "visualize_top9")[0]
    )
    assert (
        "logger.wandb.projct: unknown key" in problems_of(tmp_path, ["+logger.wandb.projct=x"], "analyze_occlusion")[0]
    )
    # notes of one's own are the one free-form key; any other unknown key is refused, naming what the app takes
    assert problems_of(tmp_path, ["+notes=first try"]) == problems_of(tmp_path, ["+notes.lr_note=x"]) == []
    assert problems_of(tmp_path, ["ckpt_path=x.ckpt", "+image_dir=x"], "visualize_top9") == [
        "image_dir: unknown top-level key (did you mean 'images'?); zf-visualize top9 takes: batch_size, ckpt_path, "
        "data, device, figure_formats, group, images, job_type, layers, logger, maps, maps_per_layer, max_images, "
        "method, notes, num_workers, paths, pretrained, run_name, seed, split, tags, task_name, top_k"
    ]
    assert problems_of(tmp_path, ["ckpt_path=x.ckpt", "+images.image_dirr=x"], "visualize_top9") == [
        "images.image_dirr: unknown key for images (did you mean 'image_dir'?); allowed keys: image_dir, indices, "
        "labels, max_images, require_labels, split"
    ]
    assert (
        "occlusion.windw: unknown key for occlusion (did you mean 'window'?)"
        in problems_of(tmp_path, ["ckpt_path=x.ckpt", "+occlusion.windw=32"], "analyze_occlusion")[0]
    )


def test_the_hydra_callback_ends_the_process_with_the_problems(tmp_path, capsys):
    # Hydra turns exceptions of callbacks into warnings: the callback exits instead
    cfg = compose_config("train", tmp_path / "run", [*TINY, "model.optimizer.lr=-1"])
    with pytest.raises(SystemExit) as stopped:
        ValidateConfig().on_run_start(config=cfg)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(
        "zf-train: error: invalid config (1 problem):\n  - model.optimizer.lr=-1: must be > 0"
    )
    ValidateConfig().on_run_start(config=compose_config("train", tmp_path / "ok", TINY))


def test_the_callback_is_registered_for_every_app():
    hydra_cfg = OmegaConf.load(Path(config_dir()) / "hydra" / "default.yaml")
    assert hydra_cfg.callbacks.validate_config._target_ == "zf_lightning.config.checker.ValidateConfig"
    for primary in Path(config_dir()).glob("*.yaml"):
        assert {"hydra": "default"} in OmegaConf.load(primary).defaults, primary.name


# --------------------------------------------------------------------------- the console script, end to end


def zf_train(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "zf-train"
    return subprocess.run(
        [str(script), *args], env=env or cli_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


def test_zf_train_refuses_a_bad_config_before_making_any_directory(tmp_path):
    done = zf_train(
        [
            "+data.batch_sise=64",  # a misspelled key
            "trainer.max_epochs=ten",  # a wrong type
            "callbacks.feature_evolution.snapshot_epochs=[5,2,2]",  # unsorted, duplicate snapshot epochs
            "model.optimizer.lr=-0.01",  # a negative learning rate
            "trainer=ddp_cpu",
            "data.batch_size=129",  # a batch that does not divide across 2 processes
        ],
        tmp_path,
    )
    assert done.returncode != 0
    err = done.stderr
    assert "invalid config (5 problems)" in err, err[-3000:]
    assert (
        "data.batch_sise: unknown key" in err
        and "did you mean 'batch_size'" in err
        and "allowed keys: _target_, batch_size" in err
    )
    assert "trainer.max_epochs='ten': expected int | null, got str" in err
    assert "callbacks.feature_evolution.snapshot_epochs=[5, 2, 2]: must be a non-empty, strictly increasing" in err
    assert "model.optimizer.lr=-0.01: must be > 0" in err
    assert "data.batch_size=129" in err and "a multiple of 2, e.g. 128 or 130" in err
    assert not (tmp_path / "logs").exists()  # neither the run dir nor its parents


def zf_train_in_process(args: list[str], tmp_path: Path, monkeypatch, capsys) -> tuple[int, str]:
    """zf-train's main with these arguments, in this process (the console script is this function; the test above
    runs the script itself): its exit status and standard error."""
    from zf_lightning.cli.train import main

    code = run_console_main(monkeypatch, tmp_path, main, ["zf-train", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "override, listed", [("model=zfnet_fc9999", "zfnet_fc8192")]
)  # data=... fails the same way, in Hydra
def test_an_unknown_model_or_data_name_is_refused_before_making_any_directory(
    tmp_path, monkeypatch, capsys, override, listed
):
    code, err = zf_train_in_process([override], tmp_path, monkeypatch, capsys)
    group, name = override.split("=")
    assert code != 0
    assert f"Could not find '{group}/{name}'" in err and listed in err, err[-3000:]
    assert not (tmp_path / "logs").exists()


def test_a_multirun_with_one_bad_job_starts_no_job(tmp_path, monkeypatch, capsys):
    code, err = zf_train_in_process(
        ["-m", *TINY, "logger=csv", "model.optimizer.lr=0.01,-0.01"], tmp_path, monkeypatch, capsys
    )
    assert code != 0
    assert "invalid multirun: 1 of 2 jobs have a bad config; no job was started" in err, err[-3000:]
    assert "job #1 (" in err and "model.optimizer.lr=-0.01: must be > 0" in err
    assert not (tmp_path / "logs").exists()  # no sweep dir, no job dir


# ---------------------------------------------------------------------------------------------- secrets


def test_redact_secrets_by_key_name_and_by_environment_value():
    env = {
        "WANDB_API_KEY": "k" * 40,
        "HF_TOKEN": "hf_abcdefgh123",
        "MY_PASSWORD": "hunter2hunter2",
        "SHORT_TOKEN": "1",
        "HOME": "/home/me",
    }
    config = {
        "logger": {"wandb": {"api_key": "literal-key", "project": "zf"}},
        "auth_token": "t",
        "password": "p",
        "db": {"credentials": {"user": "u"}},
        "tokenizer": "bpe",
        "max_tokens": 5,
        "notes": f"key={'k' * 40}",
        "tags": ["hf_abcdefgh123", "plain"],
        "seed": 1,
        "secret": None,
        "overrides": ["+logger.wandb.api_key=abc", "seed=1"],
    }
    redacted = redact_secrets(config, env)
    assert redacted["logger"]["wandb"] == {"api_key": REDACTED, "project": "zf"}
    assert redacted["auth_token"] == redacted["password"] == redacted["db"]["credentials"] == REDACTED
    assert redacted["tokenizer"] == "bpe" and redacted["seed"] == 1 and redacted["secret"] is None
    assert redacted["max_tokens"] == REDACTED  # a word "tokens" counts: better one setting too many hidden
    assert redacted["notes"] == f"key={REDACTED}" and redacted["tags"] == [REDACTED, "plain"]
    assert redacted["overrides"] == [f"+logger.wandb.api_key={REDACTED}", "seed=1"]
    assert config["logger"]["wandb"]["api_key"] == "literal-key"  # the input is not modified


def test_a_failed_run_summary_hides_a_secret_in_its_error(compose_train, tmp_path, monkeypatch):
    from zf_lightning.cli.common import run_summary

    secret = f"zfsecret{uuid.uuid4().hex}"
    monkeypatch.setenv("MY_SERVICE_TOKEN", secret)
    cfg = compose_train(["logger=csv", "+notes.db_password=hunter2hunter2"])

    with pytest.raises(RuntimeError), run_summary(cfg):
        raise RuntimeError(f"could not log in with {secret}")
    written = (tmp_path / "run" / "summary.json").read_text()
    assert secret not in written and "hunter2hunter2" not in written
    summary = json.loads(written)
    assert (
        summary["error"] == f"RuntimeError: could not log in with {REDACTED}"
        and summary["config"]["notes"]["db_password"] == REDACTED
    )


@pytest.mark.slow
def test_no_secret_reaches_logged_configs_or_result_files(console_default_runs):
    # The console runs have WANDB_API_KEY set and notes.* overrides that resolve to it, contain it, or are named
    # like a secret (tests/helpers/console_runs.py); logger=default: CSV + W&B offline.
    secret = console_default_runs.secret
    run = console_default_runs.runs[0]
    files = [path for folder in console_default_runs.runs for path in folder.rglob("*") if path.is_file()]
    files += [path for path in console_default_runs.cache.rglob("*") if path.is_file()]
    assert {"summary.json", "hparams.yaml", "config.yaml"} <= {path.name for path in files}
    assert any(path.suffix == ".wandb" for path in files)
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    for path in (
        run / "summary.json",
        run / "csv" / "hparams.yaml",
    ):  # the command line itself is kept by Hydra and W&B
        assert "not-from-the-env" not in path.read_text(), path
    summary = json.loads((run / "summary.json").read_text())
    notes = summary["config"]["notes"]
    assert (
        notes["text"] == REDACTED
        and notes["run_note"] == f"key is {REDACTED}"
        and notes["service"] == {"api_key": REDACTED}
    )
    assert "text: ${oc.env:WANDB_API_KEY}" in (run / ".hydra" / "config.yaml").read_text()  # unresolved
    assert b"run_note" in next(run.rglob("*.wandb")).read_bytes()  # the config did reach W&B, redacted


def test_the_imagenet_decode_option_is_one_of_its_choices(tmp_path):
    assert config_problems(compose_config("train", tmp_path / "run", ["data=imagenet", "data.decode=gpu"])) == []
    problems = config_problems(compose_config("train", tmp_path / "run", ["data=imagenet", "data.decode=cuda"]))
    assert problems == ["data.decode='cuda': must be one of ['pil', 'reduced', 'torchvision', 'gpu']"]

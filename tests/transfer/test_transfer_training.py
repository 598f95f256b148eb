"""zf-train's transfer experiments end to end on fake trees: the three modes, VOC's multilabel head, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException

from tests.helpers.configs import compose_config
from tests.helpers.fake_trees import make_caltech101, make_caltech256, make_voc2012
from zf_lightning.cli.train import train
from zf_lightning.config.checker import ConfigError

TINY_TRANSFER = [
    "model.net.width_multiplier=0.125",  # the tiny checkpoint's width
    "data.resize_size=72",  # ... and its input sizes (its mean image is 72x72)
    "data.crop_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "data.ten_crop_test=false",
    "trainer=cpu",
    "trainer.max_epochs=2",
    "logger=csv",
    "~callbacks.progress_bar",
]


def run_transfer(tmp_path: Path, name: str, experiment: str, root: Path, overrides: list[str]) -> tuple[dict, Path]:
    out = tmp_path / name
    cfg = compose_config("train", out, [f"experiment={experiment}", f"data.root={root}", *TINY_TRANSFER, *overrides])
    summary = train(cfg)
    GlobalHydra.instance().clear()
    return summary, out


def net_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {name[len("net.") :]: value for name, value in state.items() if name.startswith("net.")}


LAST_LAYER = "classifier.6"


@pytest.fixture(scope="module")
def caltech_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("caltech")
    make_caltech101(root)  # accordion 7, airplanes 9, Faces 6 images; a grayscale JPEG, strays, BACKGROUND_Google
    make_caltech256(root)
    make_voc2012(root, num_images=12)
    return root


def test_pretrained_mode_keeps_layers_1_to_7_and_trains_a_new_last_layer(tiny_checkpoint, caltech_root, tmp_path):
    summary, out = run_transfer(
        tmp_path,
        "pretrained",
        "caltech101",
        caltech_root,
        [
            "data.num_classes=3",
            "data.train_per_class=3",
            f"model.transfer.checkpoint={tiny_checkpoint}",
        ],
    )
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert 0.0 <= summary["test"]["test/mean_class_acc"] <= 100.0
    pretrained, transferred = net_weights(tiny_checkpoint), net_weights(out / "checkpoints" / "last.ckpt")
    for name, value in transferred.items():
        if name.startswith(LAST_LAYER):
            assert value.shape[0] == 3  # the new 3-class layer
        else:
            assert torch.equal(value, pretrained[name]), f"{name} moved although layers 1-7 are fixed"
    assert json.loads((out / "summary.json").read_text())["config"]["data"]["mean_image_checkpoint"] == str(
        tiny_checkpoint
    )


def test_finetune_trains_every_layer_and_scratch_starts_from_random_weights(tiny_checkpoint, caltech_root, tmp_path):
    _, finetuned = run_transfer(
        tmp_path,
        "finetune",
        "caltech256",
        caltech_root,
        [
            "data.num_classes=3",
            "data.train_per_class=4",
            f"model.transfer.checkpoint={tiny_checkpoint}",
            "model.transfer.mode=finetune",
        ],
    )
    pretrained = net_weights(tiny_checkpoint)
    weights = net_weights(finetuned / "checkpoints" / "last.ckpt")
    assert not torch.equal(weights["features.0.weight"], pretrained["features.0.weight"])
    summary, scratch = run_transfer(
        tmp_path,
        "scratch",
        "caltech101",
        caltech_root,
        [
            "data.num_classes=3",
            "data.train_per_class=3",
            "model.transfer.mode=scratch",
            "model.transfer.checkpoint=null",
        ],
    )
    assert summary["status"] == "completed" and "test/mean_class_acc" in summary["test"]
    weights = net_weights(scratch / "checkpoints" / "last.ckpt")
    assert (weights["features.0.weight"] - pretrained["features.0.weight"]).abs().max() > 1e-3


def test_voc_trains_a_multilabel_head_and_reports_average_precision(tiny_checkpoint, caltech_root, tmp_path):
    summary, out = run_transfer(
        tmp_path, "voc", "voc2012", caltech_root, [f"model.transfer.checkpoint={tiny_checkpoint}"]
    )
    test = summary["test"]
    assert 0.0 <= test["test/mAP"] <= 100.0
    logged = [test[f"test/ap_class{c:02d}"] for c in range(20)]
    per_class = [ap for ap in logged if not math.isnan(ap)]  # classes without a positive in val have no AP
    assert per_class and len(per_class) < 20
    assert (
        abs(sum(per_class) / len(per_class) - test["test/mAP"]) < 1e-3
    )  # classes without positives are NaN and left out


@pytest.mark.parametrize(
    "overrides, error, match",
    [  # Hydra wraps errors raised while instantiating the data or model, message intact
        (
            ["data.root=/no/such/root", "data.num_classes=3"],
            InstantiationException,
            "/no/such/root/caltech101/101_ObjectCategories/<class>",
        ),
        (["data.num_classes=101"], InstantiationException, "has 3 classes but data.num_classes=101"),
        (["data.num_classes=3", "data.train_per_class=8"], InstantiationException, "at least 9"),
        (["data.num_classes=3", "model=alexnet"], ValueError, "does not fit the configured network"),
        (
            ["data.num_classes=3", "model.transfer.checkpoint=/no/such.ckpt"],
            InstantiationException,
            "no such checkpoint",
        ),
        (
            ["data.num_classes=3", "model.transfer.mode=retrain"],
            ConfigError,
            r"model.transfer.mode='retrain': must be one of \['scratch', 'pretrained', 'finetune'\]",
        ),
    ],
)
def test_bad_transfer_input_fails_before_training(tiny_checkpoint, caltech_root, tmp_path, overrides, error, match):
    cfg = compose_config(
        "train",
        tmp_path / "run",
        [
            "experiment=caltech101",
            f"data.root={caltech_root}",
            *TINY_TRANSFER,
            "data.train_per_class=3",
            f"model.transfer.checkpoint={tiny_checkpoint}",
            *overrides,
        ],
    )
    with pytest.raises(error, match=match):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def pretrained_module(weights: Path) -> list[str]:
    """A network trained elsewhere, of the paper's layout: a tiny ZFNet of the user's, from a state-dict file."""
    return [
        "pretrained=module",
        "pretrained.target=zf_lightning.testing.tiny_models.lively_tiny_zfnet",
        "+pretrained.kwargs={num_classes:5,size:64}",
        f"pretrained.weights={weights}",
        "pretrained.resize_size=72",  # the input recipe of a network built for 64 px
        "pretrained.crop_size=64",
        "model.transfer.checkpoint=null",
        "data.preset=torchvision",
    ]


def test_a_network_trained_elsewhere_transfers_its_layers_1_to_7(caltech_root, tmp_path):
    from zf_lightning.testing.tiny_models import lively_tiny_zfnet

    source = lively_tiny_zfnet(num_classes=5, size=64, seed=9)
    weights = tmp_path / "elsewhere.pth"
    torch.save({"state_dict": source.state_dict()}, weights)
    summary, out = run_transfer(
        tmp_path,
        "from_elsewhere",
        "caltech101",
        caltech_root,
        ["data.num_classes=3", "data.train_per_class=3", *pretrained_module(weights)],
    )
    assert summary["status"] == "completed" and summary["epochs"] == 2
    transferred = net_weights(out / "checkpoints" / "last.ckpt")
    assert set(transferred) == set(source.state_dict())
    for name, value in source.state_dict().items():
        if name.startswith(LAST_LAYER):
            assert transferred[name].shape[0] == 3  # a new 3-class layer, trained
        else:
            assert torch.equal(transferred[name], value), f"{name} moved although layers 1-7 are fixed"
    # The checkpoint reloads without the source: its network is rebuilt from the spec's architecture.
    from zf_lightning.models import load_network

    loaded = load_network(ckpt_path=out / "checkpoints" / "last.ckpt")
    assert loaded.num_classes == 3 and loaded.preprocessing.mean is not None  # mean/std inputs, no mean image


ELSEWHERE = "elsewhere.pth"
RESNET = ["pretrained=torchvision", "pretrained.name=resnet18", "pretrained.weights=null"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (
            [*pretrained_module(Path(ELSEWHERE)), "data.preset=paper"],
            r"data.preset='paper': .* data.preset=torchvision",
        ),
        ([*pretrained_module(Path(ELSEWHERE)), "model.transfer.checkpoint=x.ckpt"], r"give one starting network"),
        ([*RESNET, "model.transfer.checkpoint=null", "data.preset=torchvision"], "paper's layout"),
    ],
    ids=["paper preset", "two starting networks", "not of the paper's layout"],
)
def test_a_transfer_from_elsewhere_refuses_what_cannot_work(caltech_root, tmp_path, overrides, match):
    cfg = compose_config(
        "train",
        tmp_path / "run",
        [
            "experiment=caltech101",
            f"data.root={caltech_root}",
            *TINY_TRANSFER,
            "data.num_classes=3",
            "data.train_per_class=3",
            *overrides,
        ],
    )
    with pytest.raises((ValueError, InstantiationException), match=match):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()

"""Every command on a network trained elsewhere: a torchvision state-dict file (random weights) on a folder of the
user's JPEGs, end to end through the console scripts' mains; and the mistakes a user makes with one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.helpers.configs import cli_env, run_console_main
from tests.helpers.images import photo_like, save_image
from zf_lightning.cli import analyze, evaluate, visualize


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save({"state_dict": net.state_dict()}, path)  # as training scripts often save it
    return path


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """A user's folder: class sub-folders and one image at the top, JPEGs of different sizes."""
    root = tmp_path_factory.mktemp("my_images")
    for i, (folder, size) in enumerate(
        [("cats", (300, 260)), ("cats", (280, 300)), ("dogs", (320, 240)), ("", (256, 256))]
    ):
        save_image(root / folder / f"image_{i}.jpg", photo_like(*size, seed=i), quality=90)
    return root


def resnet_args(resnet18_file: Path) -> list[str]:
    return [
        "pretrained=torchvision",
        "pretrained.name=resnet18",
        f"pretrained.weights={resnet18_file}",
        "logger=csv",
        "device=cpu",
    ]


def only_run_dir(tmp_path: Path, task: str) -> Path:
    runs = sorted((tmp_path / "logs" / task / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_top9_of_a_torchvision_resnet_on_a_folder_of_jpegs(monkeypatch, tmp_path, capsys, resnet18_file, jpeg_folder):
    args = [*resnet_args(resnet18_file), f"images.image_dir={jpeg_folder}", "layers=[layer4,layer2.1]"]
    args += ["maps_per_layer=2", "top_k=2", "batch_size=2"]
    assert run_console_main(monkeypatch, tmp_path, visualize.main, ["zf-visualize", "top9", *args]) == 0, (
        capsys.readouterr()
    )
    run = only_run_dir(tmp_path, "top9")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_images"] == 4
    assert summary["image_dir"] == str(jpeg_folder) and summary["checkpoint"] is None
    assert "resnet18" in summary["network"]
    for layer in ("layer4", "layer2.1"):
        entry = summary["layers"][layer]
        assert Path(entry["png"]).stat().st_size > 5000
        assert layer in entry["title"] and "resnet18" in entry["title"]
        arrays = np.load(entry["npz"])
        assert arrays["projections"].shape[:2] == (2, 2)
        assert np.abs(arrays["projections"]).max() > 0  # something was projected


def test_occlusion_of_a_torchvision_resnet_on_a_folder_of_jpegs(
    monkeypatch, tmp_path, capsys, resnet18_file, jpeg_folder
):
    args = [*resnet_args(resnet18_file), f"images.image_dir={jpeg_folder}", "occlusion.layer=layer4"]
    args += ["occlusion.window=112", "occlusion.stride=56", "occlusion.batch_size=9"]
    assert run_console_main(monkeypatch, tmp_path, analyze.main, ["zf-analyze", "occlusion", *args]) == 0, (
        capsys.readouterr()
    )
    run = only_run_dir(tmp_path, "occlusion")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["num_images"] == 4
    assert summary["label_source"] == "predicted"  # no labels given; folders are not ImageNet words
    assert (run / "occlusion.png").stat().st_size > 5000
    # class names are ImageNet words from torchvision's metadata, not indices
    assert all(not str(row["target_name"]).isdigit() for row in summary["images"])


def test_zf_eval_of_a_pretrained_network_counts_errors_as_an_independent_loop(monkeypatch, tmp_path, capsys):
    torch.manual_seed(1)
    net = torchvision.models.alexnet(weights=None, num_classes=10)
    weights = tmp_path / "alexnet10.pth"
    torch.save(net.state_dict(), weights)
    args = ["pretrained=torchvision", "pretrained.name=alexnet", f"pretrained.weights={weights}"]
    args += ["pretrained.num_classes=10", "pretrained.convert=false", "logger=csv", "data.test_per_class=3"]
    args += ["data.num_workers=0"]
    assert run_console_main(monkeypatch, tmp_path, evaluate.main, ["zf-eval", *args]) == 0, capsys.readouterr()
    summary = json.loads((only_run_dir(tmp_path, "eval") / "summary.json").read_text())
    assert summary["num_images"] == 30 and summary["ten_crop"] is False

    from zf_lightning.data import SyntheticDataModule
    from zf_lightning.models.pretrained import load_network

    loaded = load_network(
        pretrained={
            "source": "torchvision",
            "name": "alexnet",
            "weights": str(weights),
            "num_classes": 10,
            "convert": False,
        }
    )
    dataset = SyntheticDataModule(test_per_class=3).make_dataset("test", loaded.preprocessing.transform())
    wrong1 = wrong5 = 0
    with torch.no_grad():
        for image, label in dataset:
            ranked = loaded.net(image[None])[0].argsort(descending=True)
            wrong1 += int(ranked[0] != label)
            wrong5 += int(label not in ranked[:5])
    assert summary["test"]["test/top1_err"] == pytest.approx(100 * wrong1 / 30)
    assert summary["test"]["test/top5_err"] == pytest.approx(100 * wrong5 / 30)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pretrained=torchvision", "pretrained.name=resnet1800", "pretrained.weights=null"], "resnet18"),
        (["ckpt_path=x.ckpt", "pretrained=torchvision", "pretrained.name=resnet18"], "give exactly one network"),
        ([], "give exactly one network"),
        (["pretrained=module"], "pretrained.target: required"),
    ],
    ids=["unknown name", "both", "neither", "module without target"],
)
def test_a_bad_network_source_is_one_line_without_a_traceback(monkeypatch, tmp_path, capsys, args, message):
    code = run_console_main(monkeypatch, tmp_path, analyze.main, ["zf-analyze", "occlusion", "logger=csv", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err, err


def test_a_state_dict_of_another_network_names_the_keys(monkeypatch, tmp_path, capsys, resnet18_file):
    args = ["pretrained=torchvision", "pretrained.name=alexnet", f"pretrained.weights={resnet18_file}", "logger=csv"]
    code = run_console_main(monkeypatch, tmp_path, visualize.main, ["zf-visualize", "top9", *args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "16 missing keys (features.0.weight" in err and "122 unexpected keys (conv1.weight" in err, err


def test_the_console_script_without_weights_offline_says_what_to_download(tmp_path):
    env = {**cli_env(tmp_path), "TORCH_HOME": str(tmp_path / "torch_home")}
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "zf-visualize"),
            "filters",
            "pretrained=torchvision",
            "pretrained.name=resnet18",
            "pretrained.weights=IMAGENET1K_V1",
            "logger=csv",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "download.pytorch.org" in done.stderr and "pretrained.weights" in done.stderr, done.stderr

"""The feature-analysis table: block features, cached extraction, per-class accuracy, and zf-features end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.configs import compose_config
from tests.helpers.fake_trees import make_caltech101
from zf_lightning.analysis.features import LayerFeatures
from zf_lightning.cli.features import feature_analysis
from zf_lightning.testing.tiny_models import lively_tiny_zfnet
from zf_lightning.transfer.feature_analysis import (
    BlockFeatures,
    cache_key,
    cached_features,
    make_classifier,
    score_rows,
)


def test_block_features_are_the_block_outputs_pooled_to_the_grid():
    net = lively_tiny_zfnet(size=64)
    images = torch.randn(3, 3, 64, 64)
    features = BlockFeatures(net, (1, 2, 5, 7), grid=4)(images)
    with torch.no_grad():
        x, outputs = images, []
        for module in net.features:
            x = module(x)
            outputs.append(x)
    convs = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)]
    block1 = outputs[convs[1] - 1]  # conv1, ReLU, pool, LRN
    assert block1.shape[1:] == (12, 15, 15)
    # Independent average pooling to 4x4: adaptive bins [floor(i*15/4), ceil((i+1)*15/4)).
    bins = [(int(np.floor(i * 15 / 4)), int(np.ceil((i + 1) * 15 / 4))) for i in range(4)]
    pooled = torch.stack(
        [torch.stack([block1[:, :, a:b, c:d].mean(dim=(2, 3)) for c, d in bins], dim=-1) for a, b in bins], dim=-2
    )
    torch.testing.assert_close(features[1], pooled.flatten(1))
    torch.testing.assert_close(features[5], net.features(images).flatten(1))  # pool5's 1x1 output is under the grid
    torch.testing.assert_close(features[7], LayerFeatures(net, (7,))(images).features[7])
    assert features[2].shape == (3, 32 * 3 * 3)


def test_scores_are_mean_per_class_accuracies():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [30, 10, 20])
    features = {5: rng.normal(size=(60, 8)) + labels[:, None] * 0.8}
    train, test = np.arange(0, 60, 2), np.arange(1, 60, 2)
    [result] = score_rows(features, labels, train, test, rows=[("softmax", 5)])
    predicted = make_classifier("softmax").fit(features[5][train], labels[train]).predict(features[5][test])
    per_class = [np.mean(predicted[labels[test] == c] == c) for c in range(3)]
    assert result.accuracy == pytest.approx(100 * np.mean(per_class))
    assert result.name == "Softmax(5)"
    separable = {1: np.eye(3)[labels] * 10 + rng.normal(scale=0.01, size=(60, 3))}
    assert score_rows(separable, labels, train, test, rows=[("svm", 1)])[0].accuracy == 100.0


def test_features_are_computed_once_and_the_key_follows_the_checkpoint(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {5: np.ones((4, 2), np.float32)}, np.arange(4)

    first = cached_features(tmp_path / "f.npz", compute)
    second = cached_features(tmp_path / "f.npz", compute)
    assert calls == [1] and not first[2] and second[2]
    np.testing.assert_array_equal(second[0][5], first[0][5])
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"a")
    before = cache_key(checkpoint, "caltech101", [5], 6, "crop=224")
    assert before != cache_key(checkpoint, "caltech101", [5, 7], 6, "crop=224")
    checkpoint.write_bytes(b"bb")  # retrained: another file
    assert before != cache_key(checkpoint, "caltech101", [5], 6, "crop=224")


def compose_features(tmp_path: Path, name: str, root: Path, ckpt: Path, overrides: list[str] = ()):
    return compose_config(
        "features",
        tmp_path / name,
        [
            "experiment=features_caltech101",
            f"data.root={root}",
            f"ckpt_path={ckpt}",
            "data.num_classes=3",
            "data.train_per_class=3",
            "data.resize_size=72",
            "data.crop_size=64",
            "data.num_workers=0",
            "num_workers=0",
            *overrides,
        ],
    )


def test_zf_features_end_to_end_on_a_fake_caltech(tiny_checkpoint, tmp_path):
    root = tmp_path / "data"
    make_caltech101(root)
    first = feature_analysis(compose_features(tmp_path, "split0", root, tiny_checkpoint))
    assert first["status"] == "completed" and not first["feature_cache"]["hit"]
    assert list(first["test"]) == [
        f"test/{row}"
        for row in ("SVM(1)", "SVM(2)", "SVM(3)", "SVM(4)", "SVM(5)", "SVM(7)", "Softmax(5)", "Softmax(7)")
    ]
    assert all(0.0 <= value <= 100.0 for value in first["test"].values())
    assert first["split_sizes"] == {"train": 9, "test": (7 - 3) + (9 - 3) + (6 - 3)}
    csv = (tmp_path / "split0" / "feature_analysis.csv").read_text().splitlines()
    assert csv[0] == "row,classifier,layer,accuracy" and len(csv) == 9
    second = feature_analysis(
        compose_features(tmp_path, "split1", root, tiny_checkpoint, ["data.split_seed=1", "~logger"])
    )
    assert second["feature_cache"]["hit"]  # the second split reuses the features
    logged = next((tmp_path / "split0").glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    assert b"test/SVM(5)" in logged
    assert json.loads((tmp_path / "split1" / "summary.json").read_text())["split_seed"] == 1


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["rows=[svm:6]"], r"rows: 'svm:6' is not <classifier>:<layer>"),
        (["rows=[tree:5]"], r"rows: 'tree:5'"),
        (["data.crop_size=56"], "was built for 64px inputs but data.crop_size=56"),
    ],
)
def test_zf_features_refuses_bad_input(tiny_checkpoint, tmp_path, overrides, match):
    root = tmp_path / "data"
    make_caltech101(root)
    cfg = compose_features(tmp_path, "run", root, tiny_checkpoint, ["~logger", *overrides])
    with pytest.raises(ValueError, match=match):
        feature_analysis(cfg)
    assert not (tmp_path / "run" / "feature_analysis.csv").exists()


def test_zf_features_of_a_pretrained_network_uses_its_own_input_recipe(tmp_path):
    root = tmp_path / "data"
    make_caltech101(root)
    weights = tmp_path / "tiny.pth"
    net = lively_tiny_zfnet(num_classes=5, size=64, seed=3)
    torch.save({"model": net.state_dict()}, weights)
    pretrained = [
        "pretrained=module",
        "pretrained.target=zf_lightning.testing.tiny_models.lively_tiny_zfnet",
        "+pretrained.kwargs={num_classes:5,size:64}",
        f"pretrained.weights={weights}",
        "pretrained.resize_size=72",
        "pretrained.crop_size=64",
        "pretrained.mean=[0.5,0.4,0.3]",
        "pretrained.std=[0.2,0.25,0.3]",
    ]
    cfg = compose_features(tmp_path, "run", root, Path("unused"), ["ckpt_path=null", "~logger", *pretrained])
    summary = feature_analysis(cfg)
    assert summary["status"] == "completed" and summary["checkpoint"] is None
    assert "lively_tiny_zfnet" in summary["network"] and "tiny.pth" in summary["network"]
    cached = np.load(summary["feature_cache"]["file"])
    # The first Caltech image by hand: PIL resize of the short side to 72, centre 64 crop, mean/std normalised.
    from PIL import Image
    from torchvision.transforms import functional as TF

    from zf_lightning.transfer.datasets import dataset_by_name

    first = dataset_by_name("caltech101", root).samples[0][0]
    image = Image.open(first).convert("RGB")
    x = TF.normalize(TF.to_tensor(TF.center_crop(TF.resize(image, 72), 64)), [0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    expected = BlockFeatures(net, [5], grid=6)(x[None])[5][0].numpy()
    np.testing.assert_allclose(cached["layer5"][0], expected, rtol=1e-4, atol=1e-5)

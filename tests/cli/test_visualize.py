"""zf-visualize on a checkpoint of the tiny model: files, numbers and errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.configs import compose_config
from zf_lightning.cli.common import load_checkpoint_with_data
from zf_lightning.cli.visualize import filter_statistics, filters, top9
from zf_lightning.deconv import Deconvnet


def compose_top9(tmp_path: Path, ckpt: Path, overrides: list[str] = ()):
    return compose_config(
        "visualize_top9", tmp_path / "top9", [f"ckpt_path={ckpt}", "data.val_per_class=3", *overrides]
    )


def test_top9_writes_figures_arrays_wandb_and_summary(tiny_checkpoint, tmp_path):
    cfg = compose_top9(
        tmp_path, tiny_checkpoint, ["layers=[1,2,5]", "maps_per_layer=2", "+maps={5:[0,3,6]}", "batch_size=7"]
    )
    summary = top9(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["num_images"] == 30
    assert json.loads((out / "summary.json").read_text())["layers"]["5"]["maps"] == [0, 3, 6]

    model, datamodule = load_checkpoint_with_data(tiny_checkpoint, cfg.data)
    deconv = Deconvnet(model.net.eval())
    dataset = datamodule.split_dataset("val")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    maps = deconv.feature_maps(images, [1, 2, 5])
    for layer, expected_maps in [(1, 2), (2, 2), (5, 3)]:
        png = out / f"top9_layer{layer}.png"
        assert png.stat().st_size > 1000
        arrays = np.load(out / f"top9_layer{layer}.npz")
        field = deconv.receptive_field(layer).size
        assert arrays["projections"].shape == (expected_maps, 9, 3, *field)
        assert arrays["patches"].shape == (expected_maps, 9, 3, *field)
        assert (arrays["patches"] >= 0).all() and (arrays["patches"] <= 1).all()
        # Brute force over the split: the top 9 per-image maxima of each map, best first.
        for m, map_id in enumerate(arrays["maps"]):
            per_image = maps[layer][:, map_id].flatten(1).amax(dim=1)
            best = torch.sort(per_image, descending=True, stable=True)
            np.testing.assert_allclose(arrays["values"][m], best.values[:9].numpy(), rtol=1e-5)
            np.testing.assert_allclose(per_image[arrays["image_index"][m]].numpy(), arrays["values"][m], rtol=1e-5)
    wandb_files = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert wandb_files, "no offline W&B run"
    logged = wandb_files[0].read_bytes()
    assert b"top9/layer1" in logged and b"top9/layer5" in logged


def test_top9_guided_method_and_random_maps_are_seeded(tiny_checkpoint, tmp_path):
    a = top9(
        compose_top9(
            tmp_path / "a",
            tiny_checkpoint,
            ["layers=[3]", "maps_per_layer=3", "method=guided", "~logger", "max_images=12"],
        )
    )
    b = top9(
        compose_top9(
            tmp_path / "b",
            tiny_checkpoint,
            ["layers=[3]", "maps_per_layer=3", "method=guided", "~logger", "max_images=12"],
        )
    )
    assert a["layers"]["3"]["maps"] == b["layers"]["3"]["maps"] and len(a["layers"]["3"]["maps"]) == 3
    assert a["num_images"] == 12
    np.testing.assert_array_equal(
        np.load(a["layers"]["3"]["npz"])["projections"], np.load(b["layers"]["3"]["npz"])["projections"]
    )


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["layers=[6]"], ValueError, r"zf-visualize top9: unknown layer\(s\) \[6\]: the model has 5 conv layers"),
        (["+maps={1:[99]}"], ValueError, r"map\(s\) \[99\] of layer 1 out of range: it has 12 maps"),
        (
            ["layers=[1]", "+maps={2:[0]}"],
            ValueError,
            r"maps are listed for layer\(s\) \[2\], which are not among the layers \[1\]",
        ),
        (["data.num_classes=5"], ValueError, "has 10 classes but data.num_classes=5"),
        (["split=holdout"], ValueError, r"split='holdout': must be one of \['train', 'val', 'test'\]"),
        (["method=lrp"], ValueError, "method='lrp': must be one of"),
    ],
)
def test_top9_bad_input_fails_before_writing_figures(tiny_checkpoint, tmp_path, overrides, error, match):
    cfg = compose_top9(tmp_path, tiny_checkpoint, ["~logger", *overrides])
    with pytest.raises(error, match=match):
        top9(cfg)
    assert not list(Path(cfg.paths.output_dir).glob("top9_layer*"))


def test_top9_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        top9(compose_top9(tmp_path, tmp_path / "nope.ckpt", ["~logger"]))


def test_filters_side_by_side_for_alexnet_and_zfnet(tiny_alexnet_checkpoint, tiny_checkpoint, tmp_path):
    cfg = compose_config(
        "visualize_filters",
        tmp_path / "filters",
        [f"ckpt_paths=[{tiny_alexnet_checkpoint},{tiny_checkpoint}]", "data.val_per_class=2", "layer2_maps=4"],
    )
    summary = filters(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed"
    assert summary["titles"] == ["alexnet (epoch000.ckpt): conv1 11x11/4", "zfnet (epoch000.ckpt): conv1 7x7/2"]
    for name in ("filters_layer1.png", "layer2_projections.png"):
        assert (out / name).stat().st_size > 5000
    arrays = np.load(out / "filters.npz")
    alex, zf = (load_checkpoint_with_data(path, cfg.data)[0].net for path in (tiny_alexnet_checkpoint, tiny_checkpoint))
    np.testing.assert_array_equal(arrays["ckpt0_layer1_filters"], alex.features[0].weight.detach().numpy())
    np.testing.assert_array_equal(arrays["ckpt1_layer1_filters"], zf.features[0].weight.detach().numpy())
    assert arrays["ckpt0_layer2_projections"].shape[:2] == (4, 1) and arrays["ckpt1_layer2_maps"].shape == (4,)
    stats = summary["layer1"][str(tiny_checkpoint)]
    assert stats["filters"] == zf.features[0].out_channels and 0 <= stats["dead_filters"] < stats["filters"]
    assert b"filters/layer1" in next(out.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()


def test_filter_statistics_counts_dead_filters():
    weight = torch.ones(4, 3, 2, 2)
    weight[1] *= 0.01  # RMS 1% of the largest: dead
    weight[2] *= 0.5
    stats = filter_statistics(weight)
    assert stats == {
        "filters": 4,
        "rms_mean": pytest.approx((1 + 0.01 + 0.5 + 1) / 4),
        "rms_max": pytest.approx(1.0),
        "dead_filters": 1,
    }


def test_filters_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"ckpt_paths / pretrained: give exactly one network \(neither given\)"):
        filters(compose_config("visualize_filters", tmp_path / "a", ["ckpt_paths=[]", "~logger"]))
    missing = tmp_path / "missing.ckpt"
    cfg = compose_config("visualize_filters", tmp_path / "b", [f"ckpt_paths=[{tiny_checkpoint},{missing}]", "~logger"])
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        filters(cfg)
    assert not (Path(cfg.paths.output_dir) / "filters_layer1.png").exists()

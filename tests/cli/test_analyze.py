"""zf-analyze on a checkpoint of the tiny model: files on disk, numbers against direct computation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.configs import compose_config, wandb_run_bytes
from zf_lightning.cli.analyze import correspondence, invariance, occlusion
from zf_lightning.cli.common import load_checkpoint_with_data


def compose_analyze(command: str, tmp_path: Path, ckpt: Path, overrides: list[str] = ()):
    return compose_config(
        f"analyze_{command}", tmp_path / command, [f"ckpt_path={ckpt}", "data.val_per_class=3", *overrides]
    )


def write_split_as_folder(cfg, folder: Path, count: int, corrupt: bool = False) -> list[str]:
    """The first `count` raw val images as PNG files (lossless, so decoded pixels equal the split's)."""
    _, datamodule = load_checkpoint_with_data(cfg.ckpt_path, cfg.data)
    raw = datamodule.make_dataset("val", None)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        image, _ = raw[i]
        name = f"img_{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / name)
        names.append(name)
    (folder / "notes.txt").write_text("not an image: ignored")
    if corrupt:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return names


def test_occlusion_writes_figure_arrays_csv_wandb_and_summary(tiny_checkpoint, tmp_path):
    cfg = compose_analyze(
        "occlusion", tmp_path, tiny_checkpoint, ["images.max_images=3", "occlusion.window=24", "occlusion.stride=18"]
    )
    summary = occlusion(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["num_images"] == 3 and summary["label_source"] == "dataset"
    assert summary["positions"] == [4, 4]  # 0, 18, 36 and the square at 54, cut by the border of the 64 px input
    assert (out / "occlusion.png").stat().st_size > 5000
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    csv = (out / "occlusion.csv").read_text().splitlines()
    assert csv[0].startswith("image,target,target_name") and len(csv) == 4

    # Independently: the split's centre crops, the square pasted by slicing, one forward pass each.
    model, datamodule = load_checkpoint_with_data(tiny_checkpoint, cfg.data)
    net = model.net.eval()
    dataset = datamodule.split_dataset("val")
    arrays = np.load(out / "occlusion.npz")
    assert list(arrays["names"]) == ["val_00000", "val_00001", "val_00002"]
    for b in range(3):
        image, label = dataset[b]
        assert arrays["targets"][b] == label
        for i, top in enumerate((0, 18, 36, 54)):
            for j, left in enumerate((0, 18, 36, 54)):
                occluded = image.clone()
                occluded[:, top : top + 24, left : left + 24] = 0.0
                with torch.no_grad():
                    probs = net(occluded[None]).softmax(dim=1)[0]
                np.testing.assert_allclose(
                    arrays["true_class_prob"][b, i, j], probs[label].item(), rtol=1e-4, atol=1e-6
                )
                assert arrays["top_class"][b, i, j] == probs.argmax().item()
    assert arrays["layer_activation"].shape == (3, 4, 4) and arrays["projection"].shape == (3, 3, 64, 64)
    logged = next(out.glob("wandb/offline-run-*/run-*.wandb")).read_bytes()
    assert b"occlusion/figure" in logged and b"occlusion/images" in logged


def test_occlusion_on_a_folder_equals_the_same_images_from_the_split(tiny_checkpoint, tmp_path):
    split_cfg = compose_analyze("occlusion", tmp_path / "split", tiny_checkpoint, ["images.max_images=2", "~logger"])
    folder = tmp_path / "mine"
    names = write_split_as_folder(split_cfg, folder, 2)
    from_split = occlusion(split_cfg)
    labels = {name: int(t) for name, t in zip(names, np.load(from_split["files"]["npz"])["targets"])}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    folder_cfg = compose_analyze(
        "occlusion",
        tmp_path / "folder",
        tiny_checkpoint,
        [f"images.image_dir={folder}", f"images.labels={tmp_path / 'labels.json'}", "~logger"],
    )
    from_folder = occlusion(folder_cfg)
    assert from_folder["label_source"] == "labels"
    a, b = np.load(from_split["files"]["npz"]), np.load(from_folder["files"]["npz"])
    assert list(b["names"]) == names
    for key in ("true_class_prob", "layer_activation", "top_class", "chosen_map", "projection"):
        np.testing.assert_array_equal(a[key], b[key])


def test_occlusion_without_labels_uses_the_models_prediction(tiny_checkpoint, tmp_path):
    cfg = compose_analyze("occlusion", tmp_path / "split", tiny_checkpoint, ["~logger"])
    folder = tmp_path / "mine"
    write_split_as_folder(cfg, folder, 2)
    summary = occlusion(
        compose_analyze("occlusion", tmp_path / "folder", tiny_checkpoint, [f"images.image_dir={folder}", "~logger"])
    )
    assert summary["label_source"] == "predicted"
    for row in summary["images"]:
        assert row["target"] == row["top_class_unoccluded"]


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["images.image_dir=/no/such/folder"], FileNotFoundError, "no such folder"),
        (["images.image_dir=CORRUPT"], ValueError, r"unreadable image\(s\): broken.jpg"),
        (
            ["images.image_dir=FOLDER", "images.labels={img_0.png:3}"],
            ValueError,
            r"images without a label: \['img_1.png'\]",
        ),
        (["images.image_dir=FOLDER", "images.labels={img_0.png:3,img_1.png:99}"], ValueError, "unknown classes"),
        (["arch=alexnet"], ValueError, "is a 'zfnet' network but the config says arch='alexnet'"),
        (["data.num_classes=7"], ValueError, "has 10 classes but data.num_classes=7"),
        (["occlusion.window=65"], ValueError, "larger than the 64x64"),
        (["images.split=null"], ValueError, "give images.image_dir"),
        (["images.indices=[0,999]"], ValueError, "out of range"),
        (["ckpt_path=/no/such.ckpt"], FileNotFoundError, "no such checkpoint"),
    ],
)
def test_bad_input_fails_before_any_output_and_keeps_earlier_files(tiny_checkpoint, tmp_path, overrides, error, match):
    folder, corrupt = tmp_path / "folder", tmp_path / "corrupt"
    probe = compose_analyze("occlusion", tmp_path / "probe", tiny_checkpoint, ["~logger"])
    write_split_as_folder(probe, folder, 2)
    write_split_as_folder(probe, corrupt, 1, corrupt=True)
    overrides = [o.replace("=FOLDER", f"={folder}").replace("=CORRUPT", f"={corrupt}") for o in overrides]
    cfg = compose_analyze("occlusion", tmp_path, tiny_checkpoint, overrides)
    out = Path(cfg.paths.output_dir)
    (out / "occlusion.png").write_bytes(b"an earlier figure")
    with pytest.raises(error, match=match):
        occlusion(cfg)
    assert (out / "occlusion.png").read_bytes() == b"an earlier figure"
    assert not (out / "occlusion.npz").exists() and not list(out.glob("wandb/offline-run-*"))
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


def test_invariance_writes_curves_figure_and_equals_the_engine(tiny_checkpoint, tmp_path):
    from zf_lightning.analysis.features import LayerFeatures
    from zf_lightning.analysis.invariance import Invariance

    cfg = compose_analyze(
        "invariance",
        tmp_path,
        tiny_checkpoint,
        [
            "images.max_images=2",
            "invariance.amounts.translation=[-8,0,8]",
            "invariance.amounts.scale=[1.0,1.5]",
            "invariance.amounts.rotation=[0,90,180]",
            "invariance.layers=[1,7]",
        ],
    )
    summary = invariance(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["layers"] == [1, 7]
    assert summary["curves"]["rotation"]["amounts"] == [0.0, 90.0, 180.0]
    assert (out / "invariance.png").stat().st_size > 5000
    frame_lines = (out / "invariance.csv").read_text().splitlines()
    assert len(frame_lines) == 1 + 2 * (3 + 2 + 3)  # one row per (kind, amount, image)

    model, datamodule = load_checkpoint_with_data(tiny_checkpoint, cfg.data)
    dataset = datamodule.split_dataset("val")
    images = torch.stack([dataset[i][0] for i in range(2)])
    targets = torch.tensor([dataset[i][1] for i in range(2)])
    expected = Invariance(model.net, layers=(1, 7)).compute(images, targets, {"rotation": [0, 90, 180]})["rotation"]
    arrays = np.load(out / "invariance.npz")
    np.testing.assert_allclose(arrays["rotation_true_class_prob"], expected.true_class_prob.numpy(), rtol=1e-5)
    # By hand: a quarter turn is rot90 (clockwise for torchvision's positive angle); the paper's Euclidean distance.
    features = LayerFeatures(model.net, (7,))
    original, turned = features(images).features[7], features(torch.rot90(images, k=-1, dims=(-2, -1))).features[7]
    by_hand = (turned - original).norm(dim=1)
    np.testing.assert_allclose(arrays["rotation_distance_layer7"][:, 1], by_hand.numpy(), rtol=1e-4, atol=1e-5)
    assert b"invariance/figure" in wandb_run_bytes(out, b"invariance/figure")


def test_invariance_defaults_follow_the_crop_size_and_unknown_transforms_are_refused(tiny_checkpoint, tmp_path):
    from zf_lightning.analysis.invariance import default_amounts

    summary = invariance(
        compose_analyze(
            "invariance",
            tmp_path / "a",
            tiny_checkpoint,
            ["images.max_images=1", "~logger", "invariance.transformations=[translation]"],
        )
    )
    assert summary["curves"]["translation"]["amounts"] == default_amounts(64)["translation"]
    assert set(summary["curves"]) == {"translation"}
    cfg = compose_analyze("invariance", tmp_path / "b", tiny_checkpoint, ["~logger", "+invariance.amounts.shear=[1]"])
    with pytest.raises(
        ValueError,
        match=r"invariance.amounts.shear: unknown key for invariance.amounts; "
        r"allowed keys: rotation, scale, translation",
    ):
        invariance(cfg)
    assert not (Path(cfg.paths.output_dir) / "invariance.png").exists()


BOXES_72 = {  # on the built-in data's 72 px originals; the network sees the centre 64 px
    "val_00000": {"centre": [28, 28, 44, 44], "top_left": [4, 4, 20, 20]},
    "val_00001": {"centre": [28, 28, 44, 44], "top_left": [4, 4, 20, 20]},
    "val_00002": {"centre": [30, 26, 46, 42], "top_left": [4, 4, 20, 20]},
}


def test_correspondence_writes_the_papers_table_and_equals_the_engine(tiny_checkpoint, tmp_path):
    import yaml

    from zf_lightning.analysis.correspondence import Box, Correspondence
    from zf_lightning.data.user_images import box_in_input

    boxes_file = tmp_path / "boxes.yaml"
    boxes_file.write_text(yaml.safe_dump(BOXES_72))
    cfg = compose_analyze(
        "correspondence", tmp_path, tiny_checkpoint, [f"correspondence.boxes={boxes_file}", "correspondence.repeats=3"]
    )
    summary = correspondence(cfg)
    out = Path(cfg.paths.output_dir)
    assert summary["status"] == "completed" and summary["images"] == list(BOXES_72) and summary["pairs"] == 6
    table = (out / "correspondence.md").read_text()
    for text in ("Layer 5", "Layer 7", "centre", "top_left", "Random", "±"):
        assert text in table
    assert (out / "correspondence.csv").read_text().splitlines()[
        0
    ] == "occlusion,layer5_mean,layer5_std,layer7_mean,layer7_std"
    assert (out / "correspondence.png").stat().st_size > 5000

    model, datamodule = load_checkpoint_with_data(tiny_checkpoint, cfg.data)
    dataset = datamodule.split_dataset("val")
    images = torch.stack([dataset[i][0] for i in range(3)])
    converted = [
        {part: Box(*box_in_input(box, (72, 72), 72, 64)) for part, box in parts.items()} for parts in BOXES_72.values()
    ]
    assert converted[0]["centre"] == Box(24, 24, 40, 40)  # the 72 px image's centre 64 px start at 4
    expected = Correspondence(model.net, repeats=3, seed=cfg.seed).compute(images, converted)
    arrays = np.load(out / "correspondence.npz")
    np.testing.assert_array_equal(arrays["part_boxes"], expected.part_boxes)
    np.testing.assert_allclose(arrays["deltas"], expected.as_arrays()["deltas"])
    assert b"correspondence/table" in wandb_run_bytes(out, b"correspondence/table")


@pytest.mark.parametrize(
    "boxes, match",
    [
        (
            {**BOXES_72, "val_00002": {"centre": [60, 60, 80, 80], "top_left": [4, 4, 20, 20]}},
            r"box centre of val_00002 \[60, 60, 80, 80\] lies outside the image",
        ),
        (
            {**BOXES_72, "val_00002": {"centre": [0, 0, 3, 3], "top_left": [4, 4, 20, 20]}},
            r"part 'centre' of val_00002: .*falls outside the centre 64x64 crop",
        ),
        (
            {**BOXES_72, "val_00099": BOXES_72["val_00000"]},
            r"names images that are not among the loaded images: \['val_00099'\]",
        ),
        (None, "correspondence.boxes is required"),
    ],
)
def test_correspondence_bad_boxes_fail_before_any_output(tiny_checkpoint, tmp_path, boxes, match):
    import yaml

    overrides = ["~logger", "images.max_images=3"]
    if boxes is not None:
        (tmp_path / "boxes.yaml").write_text(yaml.safe_dump(boxes))
        overrides.append(f"correspondence.boxes={tmp_path / 'boxes.yaml'}")
    cfg = compose_analyze("correspondence", tmp_path, tiny_checkpoint, overrides)
    with pytest.raises(ValueError, match=match):
        correspondence(cfg)
    out = Path(cfg.paths.output_dir)
    assert not any((out / f"correspondence.{ext}").exists() for ext in ("png", "npz", "csv", "md"))


def test_a_job_that_fails_after_its_loggers_started_finishes_them_as_failed(tiny_checkpoint, tmp_path, monkeypatch):
    import zf_lightning.cli.common as common

    finished, real_finish = [], common.finish_loggers

    def recording_finish(loggers, status="success", error=None):
        finished.append((len(loggers), status, str(error)))
        real_finish(loggers, status, error)  # a W&B run left open would swallow the next test's run

    monkeypatch.setattr(common, "finish_loggers", recording_finish)
    cfg = compose_analyze("occlusion", tmp_path, tiny_checkpoint, ["images.max_images=1"])

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in the middle of the analysis")

    monkeypatch.setattr("zf_lightning.analysis.occlusion.OcclusionSensitivity.compute", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        occlusion(cfg)
    assert finished == [
        (1, "failed", "out of memory in the middle of the analysis")
    ]  # closed: the next job gets its own run
    logged = wandb_run_bytes(Path(cfg.paths.output_dir), b"out of memory in the middle of the analysis")
    assert b"out of memory in the middle of the analysis" in logged  # the W&B run says why it failed
    assert json.loads((Path(cfg.paths.output_dir) / "summary.json").read_text())["error"].startswith(
        "RuntimeError: out of memory"
    )


def test_zf_tables_prints_table_1_from_a_correspondence_run_beside_the_papers_numbers(tiny_checkpoint, tmp_path):
    import pandas as pd
    import yaml

    from zf_lightning.cli.tables import main as tables_main

    boxes = {  # the paper's parts, and each dog's whole head as the object the random boxes are drawn on
        name: {
            "right_eye": [20 + i, 24, 32 + i, 34],
            "left_eye": [40, 24 + i, 52, 34 + i],
            "nose": [30, 40, 42 - i, 52],
            "object": [8, 8, 64, 64],
        }
        for i, name in enumerate(["val_00000", "val_00001", "val_00002", "val_00003"])
    }
    (tmp_path / "boxes.yaml").write_text(yaml.safe_dump(boxes))
    cfg = compose_analyze(
        "correspondence",
        tmp_path,
        tiny_checkpoint,
        [f"correspondence.boxes={tmp_path / 'boxes.yaml'}", "correspondence.repeats=2", "~logger"],
    )
    summary = correspondence(cfg)
    table1 = summary["table1"]
    assert sorted(table1) == ["left_eye", "nose", "random", "right_eye"]
    assert all(table1[row]["layer5"]["std"] > 0 for row in table1)  # a spread over the 6 image pairs
    assert tables_main([str(cfg.paths.output_dir), "--out", str(tmp_path / "tables")]) == 0
    cells = pd.read_csv(tmp_path / "tables" / "table1.csv").set_index(["row", "column"])
    for row in table1:
        for layer in ("5", "7"):
            cell = cells.loc[(row, int(layer))]
            assert cell["ours_mean"] == pytest.approx(table1[row][f"layer{layer}"]["mean"])
            assert cell["ours_std"] == pytest.approx(table1[row][f"layer{layer}"]["std"])
    assert cells.loc[("nose", 5), "paper_mean"] == 0.079 and cells.loc[("random", 7), "paper_std"] == 0.014
    markdown = (tmp_path / "tables" / "table1.md").read_text()
    assert "Right Eye" in markdown and "0.067 ± 0.007" in markdown

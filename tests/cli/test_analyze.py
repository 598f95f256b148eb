"""zf-analyze on a checkpoint of the tiny model: files on disk, numbers against direct computation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import compose_config
from zf_lightning.cli.analyze import occlusion
from zf_lightning.cli.common import load_checkpoint_with_data


def compose_analyze(command: str, tmp_path: Path, ckpt: Path, overrides: list[str] = ()):
    return compose_config(f"analyze_{command}", tmp_path / command, [f"ckpt_path={ckpt}", "data.val_per_class=3", *overrides])


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
    cfg = compose_analyze("occlusion", tmp_path, tiny_checkpoint, ["images.max_images=3", "occlusion.window=24", "occlusion.stride=18"])
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
                np.testing.assert_allclose(arrays["true_class_prob"][b, i, j], probs[label].item(), rtol=1e-4, atol=1e-6)
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
    folder_cfg = compose_analyze("occlusion", tmp_path / "folder", tiny_checkpoint,
                                 [f"images.image_dir={folder}", f"images.labels={tmp_path / 'labels.json'}", "~logger"])
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
    summary = occlusion(compose_analyze("occlusion", tmp_path / "folder", tiny_checkpoint, [f"images.image_dir={folder}", "~logger"]))
    assert summary["label_source"] == "predicted"
    for row in summary["images"]:
        assert row["target"] == row["top_class_unoccluded"]


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (["images.image_dir=/no/such/folder"], FileNotFoundError, "no such folder"),
        (["images.image_dir=CORRUPT"], ValueError, r"unreadable image\(s\): broken.jpg"),
        (["images.image_dir=FOLDER", "images.labels={img_0.png:3}"], ValueError, r"images without a label: \['img_1.png'\]"),
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

"""data.decode=gpu: workers read bytes, the training device decodes and crops; the numbers of decode=torchvision.

Decoding on a CPU device here, so the two pipelines must agree bit for bit (the same libjpeg-turbo, resize and
draws); on a GPU only nvJPEG's rounding differs (bench/bench_gpu_training.py --data).
"""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from tests.helpers.images import TRAIN, make_bad_imagenet, photo_like, save_image
from zf_lightning.data.datamodules import ImageNetDataModule
from zf_lightning.data.device_decode import DeviceDecoder, PrepareForDevice, collate_for_device
from zf_lightning.data.image_files import BadImageError, BadImageLog, read_bad_image_log, read_for_device
from zf_lightning.data.jpeg import EncodedJPEG, jpeg_frame
from zf_lightning.models import ImageClassifier

WNIDS = ["n01440764", "n01443537"]


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def _without_segment(data: bytes, marker: int) -> bytes:
    """The JPEG with every segment `marker` (e.g. 0xDB, its quantisation tables) removed: header intact, body
    undecodable."""
    out, position = bytearray(data[:2]), 2
    while data[position + 1] != 0xDA:
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if data[position + 1] != marker:
            out += data[position : position + 2 + length]
        position += 2 + length
    return bytes(out + data[position:])


def test_jpeg_frame_reads_the_header_and_refuses_what_the_device_does_not_decode():
    image = photo_like(80, 72)
    assert jpeg_frame(_jpeg(image)) == (0xC0, 8, 72, 80, 3)
    assert jpeg_frame(_jpeg(image, progressive=True)).marker == 0xC2
    assert jpeg_frame(_jpeg(image.convert("L"))).components == 1
    assert jpeg_frame(_jpeg(image.convert("CMYK"))).components == 4
    whole = _jpeg(image)
    assert jpeg_frame(whole[: len(whole) // 2]) is None  # no end marker: truncated
    png = io.BytesIO()
    image.save(png, "PNG")
    assert jpeg_frame(png.getvalue()) is None and jpeg_frame(b"") is None


def test_the_worker_sends_bytes_only_for_whole_baseline_rgb_jpegs(tmp_path):
    image = photo_like(300, 260)
    baseline = save_image(tmp_path / "baseline.JPEG", image, quality=90)
    progressive = save_image(tmp_path / "progressive.JPEG", image, quality=90, progressive=True)
    gray = save_image(tmp_path / "gray.JPEG", image.convert("L"), quality=90)
    small = save_image(tmp_path / "small.JPEG", photo_like(200, 150), quality=90)
    log = BadImageLog(tmp_path / "bad.jsonl")
    encoded = read_for_device(baseline, log=log, min_size=224)
    assert isinstance(encoded, EncodedJPEG) and encoded.data.dtype == torch.uint8
    assert bytes(encoded.data.numpy()) == baseline.read_bytes() and encoded.path == str(baseline)
    assert isinstance(read_for_device(progressive), torch.Tensor)  # decoded in the worker
    assert isinstance(read_for_device(gray, log=log), Image.Image)  # converted by PIL, as decode=torchvision does
    assert isinstance(read_for_device(small, log=log, min_size=224), EncodedJPEG)
    assert {(Path(e["path"]).name, e["kind"]) for e in read_bad_image_log(log.path)} == {
        ("gray.JPEG", "converted"),
        ("small.JPEG", "small"),
    }


def _tree(root: Path) -> Path:
    """Originals (resized on the device) and short-side-256 images (a zf-prepare copy's), one progressive."""
    sizes = [(700, 525), (256, 341), (341, 256), (500, 375)]
    for split in ("train", "val"):
        for i, wnid in enumerate(WNIDS):
            for j, size in enumerate(sizes):
                save_image(
                    root / split / wnid / f"{wnid}_{j}.JPEG",
                    photo_like(*size, seed=10 * i + j),
                    quality=90,
                    progressive=j == 3,
                )
    return root


def _datamodules(root: Path, tmp_path: Path, **kwargs) -> dict[str, ImageNetDataModule]:
    dms = {
        decode: ImageNetDataModule(
            root,
            num_classes=len(WNIDS),
            decode=decode,
            cache_dir=tmp_path / "cache",
            batch_size=8,
            num_workers=0,
            **kwargs,
        )
        for decode in ("torchvision", "gpu")
    }
    for dm in dms.values():
        dm.prepare_data()
        dm.setup("fit")
        dm.setup("test")
    return dms


def test_device_decoding_gives_the_torchvision_pipelines_batches_bit_for_bit(tmp_path):
    dms = _datamodules(_tree(tmp_path / "imagenet"), tmp_path)
    assert torch.equal(dms["gpu"].load_mean_image(), dms["torchvision"].load_mean_image())  # one cached mean image
    for name, shape in (("train", (8, 3, 224, 224)), ("val", (8, 3, 224, 224)), ("test", (8, 10, 3, 224, 224))):
        loaders = {decode: getattr(dm, f"{name}_dataloader")() for decode, dm in dms.items()}
        expected_images, expected_labels = next(iter(loaders["torchvision"]))
        batch = next(iter(loaders["gpu"]))
        assert sum(p.ndim == 1 for p in batch.payloads) == 6  # the two progressive JPEGs were decoded in the worker
        images, labels = dms["gpu"].on_before_batch_transfer(batch, 0)
        assert images.shape == shape and images.dtype == torch.float32
        assert torch.equal(images, expected_images), name
        assert torch.equal(labels, expected_labels)
    flips = next(iter(dms["gpu"].train_dataloader())).crops[:, 2]
    assert 0 < int(flips.sum()) < 8  # both flipped and unflipped crops were compared


@pytest.mark.cuda
def test_on_cuda_device_decoding_gives_the_torchvision_batches_within_nvjpegs_rounding(tmp_path):
    """nvJPEG's IDCT and chroma upsampling round otherwise than libjpeg-turbo's: a pixel may differ by a few grey
    levels (stated here: the mean by under 1.5, 99 % of values within 8), the labels and crops not at all."""
    dms = _datamodules(_tree(tmp_path / "imagenet"), tmp_path)
    for name in ("train", "val", "test"):
        expected_images, expected_labels = next(iter(getattr(dms["torchvision"], f"{name}_dataloader")()))
        batch = next(iter(getattr(dms["gpu"], f"{name}_dataloader")()))
        on_cpu, _ = dms["gpu"].on_before_batch_transfer(batch, 0)  # no trainer: decodes on the CPU
        assert torch.equal(on_cpu, expected_images), name
        images, labels = dms["gpu"]._device_decoder(batch, "cuda")
        assert images.device.type == "cuda" and images.shape == expected_images.shape, name
        difference = (images.cpu() - expected_images).abs()
        assert float(difference.mean()) < 1.5, (name, float(difference.mean()))
        assert float((difference > 8).float().mean()) < 0.01, name
        assert torch.equal(labels, expected_labels), name


def test_device_decoding_trains_to_the_same_weights_as_torchvision_decoding(tmp_path):
    root = _tree(tmp_path / "imagenet")
    weights = {}
    for decode in ("torchvision", "gpu"):
        L.seed_everything(0)
        model = ImageClassifier(
            {"arch": "zfnet", "num_classes": 2, "input_size": 224, "width_multiplier": 0.0625}, lr_scheduler=None
        )
        dm = ImageNetDataModule(
            root,
            num_classes=2,
            decode=decode,
            cache_dir=tmp_path / "cache",
            batch_size=4,
            num_workers=0,
            ten_crop_test=False,
        )
        trainer = L.Trainer(
            max_epochs=1,
            limit_val_batches=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
        )
        trainer.fit(model, datamodule=dm)  # Lightning calls the datamodule's on_before_batch_transfer
        assert trainer.global_step == 2
        weights[decode] = model.state_dict()
    for key, value in weights["torchvision"].items():
        assert torch.equal(value, weights["gpu"][key]), key


def test_bad_files_are_handled_in_the_worker_as_with_torchvision_decoding(tmp_path):
    root = make_bad_imagenet(tmp_path / "imagenet")
    logs = {decode: tmp_path / f"{decode}.jsonl" for decode in ("torchvision", "gpu")}
    batches = {}
    for decode, log in logs.items():
        dm = ImageNetDataModule(
            root,
            num_classes=2,
            decode=decode,
            cache_dir=tmp_path / "cache",
            batch_size=14,
            num_workers=0,
            resize_size=72,
            crop_size=64,
            bad_image_log=log,
            mean_image_max_images=4,
        )
        dm.prepare_data()
        dm.setup("fit")
        with pytest.warns(UserWarning, match="skipping unreadable image"):
            batch = next(iter(dm.train_dataloader()))
        batches[decode] = dm.on_before_batch_transfer(batch, 0) if decode == "gpu" else batch
    assert len(batches["gpu"][0]) == sum(len(names) for names in TRAIN.values())
    assert torch.equal(batches["gpu"][0], batches["torchvision"][0]) and torch.equal(
        batches["gpu"][1], batches["torchvision"][1]
    )

    def events(log):
        return {(Path(e["path"]).name, e["kind"]) for e in read_bad_image_log(log)}

    assert events(logs["gpu"]) == events(logs["torchvision"]) and ("b6_small.JPEG", "small") in events(logs["gpu"])


def _batch_with_a_file_only_the_header_of_which_is_whole(tmp_path):
    good = [save_image(tmp_path / f"good{i}.JPEG", photo_like(300, 256, seed=i), quality=90) for i in range(3)]
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(_without_segment(good[0].read_bytes(), 0xDB))  # no quantisation tables
    paths = [good[0], broken, good[1], good[2]]
    samples = [(PrepareForDevice(256, 224, "val")(read_for_device(path)), 0) for path in paths]
    assert all(isinstance(s.payload, torch.Tensor) and s.payload.ndim == 1 for s, _ in samples)  # the header passed
    return collate_for_device(samples, split="val"), paths


def test_a_jpeg_the_device_cannot_decode_is_skipped_and_replaced_or_fails_naming_it(tmp_path):
    batch, paths = _batch_with_a_file_only_the_header_of_which_is_whole(tmp_path)
    mean = torch.zeros(3, 256, 256)
    log = BadImageLog(tmp_path / "bad.jsonl")
    with pytest.warns(UserWarning, match="skipping unreadable image .*broken.JPEG"):
        images, _ = DeviceDecoder(256, 224, mean, on_bad_image="skip", bad_image_log=log)(batch, "cpu")
    assert images.shape == (4, 3, 224, 224)
    assert torch.equal(images[1], images[2])  # replaced by the next image of the batch
    assert not torch.equal(images[0], images[2])
    assert [(Path(e["path"]).name, e["kind"]) for e in read_bad_image_log(log.path)] == [("broken.JPEG", "skipped")]
    with pytest.raises(BadImageError, match="broken.JPEG"):
        DeviceDecoder(256, 224, mean, on_bad_image="error")(batch, "cpu")


def test_bad_options_are_refused(tmp_path):
    root = _tree(tmp_path / "imagenet")
    with pytest.raises(ValueError, match="data.decode=gpu implements the paper preset.*'torchvision'"):
        ImageNetDataModule(root, num_classes=2, decode="gpu", preset="torchvision", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=r"mean image is \(3, 64, 64\); expected \(3, 256, 256\)"):
        DeviceDecoder(256, 224, torch.zeros(3, 64, 64))


def test_figures_and_the_mean_image_read_images_on_the_cpu(tmp_path):
    dm = ImageNetDataModule(_tree(tmp_path / "imagenet"), num_classes=2, decode="gpu", cache_dir=tmp_path / "cache")
    image, _ = dm.split_dataset("val")[0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 224, 224)
    assert dm.make_dataset("train", None).tensor_decode and not dm.make_dataset("train", None).device_decode

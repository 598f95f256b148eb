"""The faster input options give the default pipeline's crops: data.decode=reduced and the zf-prepare copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from tests.helpers.images import photo_like, save_image
from zf_lightning.cli.prepare import main as prepare_main
from zf_lightning.data.datamodules import ImageNetDataModule
from zf_lightning.data.image_files import BadImageError, BadImageLog, load_rgb, load_rgb_tensor, read_bad_image_log
from zf_lightning.data.imagenet_folder import ImageNetFolder
from zf_lightning.data.prepare import PrepareError, list_images, prepare, resized_size
from zf_lightning.data.transforms import paper_base

WNIDS = ["n01440764", "n01443537"]


def val_crop(image: Image.Image) -> torch.Tensor:
    """The paper preset's validation crop (before the mean image), on the 0-255 scale."""
    return v2.Compose([paper_base(256), v2.CenterCrop(224)])(image)


@pytest.mark.parametrize("size", [(1200, 900), (900, 1200), (800, 600), (2100, 1600), (500, 375)])
def test_reduced_decoding_gives_the_same_val_crop_up_to_resampling_error(tmp_path, size):
    path = save_image(tmp_path / "a.JPEG", photo_like(*size), quality=90)
    full, reduced = load_rgb(path), load_rgb(path, draft_size=256)
    assert full.size == size
    factor = max(s for s in (1, 2, 4, 8) if min(size) // 256 >= s)
    assert reduced.size == tuple(-(-s // factor) for s in size) and min(reduced.size) >= 256
    diff = (val_crop(full) - val_crop(reduced)).abs()
    if factor == 1:  # 500x375: nothing to reduce, the very same pixels
        assert torch.equal(diff, torch.zeros_like(diff))
    else:  # measured on such images: mean 0.25-0.38, max 2-3 (of 255)
        assert diff.mean() < 1.0 and diff.max() < 12, (size, diff.mean().item(), diff.max().item())


@pytest.mark.parametrize(
    "size", [(511, 600), (512, 512), (513, 1000), (1023, 1024), (4000, 3000), (2048, 257), (300, 200)]
)
def test_reduced_decoding_never_goes_below_the_resize_size(tmp_path, size):
    path = save_image(tmp_path / "a.jpg", Image.new("RGB", size, (90, 120, 30)), quality=80)
    image = load_rgb(path, draft_size=256)
    assert min(image.size) >= min(256, min(size))
    factor = max(s for s in (1, 2, 4, 8) if max(1, min(size) // 256) >= s)  # as far as min(w, h) // 256 allows
    assert image.size == tuple(-(-s // factor) for s in size)


def test_reduced_decoding_keeps_bad_image_handling(tmp_path):
    good = save_image(tmp_path / "good.JPEG", photo_like(1100, 800), quality=90)
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[:3000])
    cmyk = save_image(tmp_path / "cmyk.JPEG", Image.new("CMYK", (1100, 800), (10, 20, 30, 40)), quality=90)
    log = BadImageLog(tmp_path / "bad.jsonl")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert load_rgb(truncated, log=log, draft_size=256) is None
    with pytest.raises(BadImageError, match="truncated.JPEG"):
        load_rgb(truncated, on_bad_image="error", draft_size=256)
    converted = load_rgb(cmyk, log=log, draft_size=256)
    assert converted.mode == "RGB" and converted.size == (550, 400)
    assert {(Path(e["path"]).name, e["kind"]) for e in read_bad_image_log(log.path)} == {
        ("truncated.JPEG", "skipped"),
        ("cmyk.JPEG", "converted"),
    }


def _tree(root: Path) -> Path:
    sizes = [(1200, 900), (500, 375), (375, 500)]
    for split in ("train", "val"):
        for i, wnid in enumerate(WNIDS):
            for j, size in enumerate(sizes):
                save_image(root / split / wnid / f"{wnid}_{j}.JPEG", photo_like(*size, seed=10 * i + j), quality=90)
    return root


def test_datamodule_decode_option(tmp_path):
    root = _tree(tmp_path / "imagenet")
    with pytest.raises(ValueError, match="data.decode"):
        ImageNetDataModule(root, num_classes=2, decode="turbo", cache_dir=tmp_path / "cache")
    dms = {
        decode: ImageNetDataModule(root, num_classes=2, decode=decode, cache_dir=tmp_path / "cache")
        for decode in ("pil", "reduced")
    }
    assert dms["pil"].dataset_key() != dms["reduced"].dataset_key()  # mean images cached apart
    crops = {}
    for decode, dm in dms.items():
        dataset = dm.make_dataset("val", val_crop)
        assert dataset.draft_size == (256 if decode == "reduced" else None)
        crops[decode] = torch.stack([dataset[i][0] for i in range(len(dataset))])
    diff = (crops["pil"] - crops["reduced"]).abs()
    assert 0 < diff.mean() < 1.0  # only the 1200x900 images differ


def test_zf_prepare_copy_gives_the_same_crops_up_to_jpeg_error(tmp_path):
    src, dst = _tree(tmp_path / "imagenet"), tmp_path / "imagenet_256"
    (src / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    bad = src / "train" / WNIDS[1] / "bad.JPEG"
    bad.write_bytes(b"not a jpeg")
    small = save_image(src / "val" / WNIDS[0] / "small.png", photo_like(300, 200).convert("L"))
    large_png = save_image(src / "val" / WNIDS[1] / "large.png", photo_like(640, 480))

    counts = prepare(src, dst, workers=1, progress=False)
    assert (counts.total, counts.resized, counts.copied, counts.bad) == (15, 13, 1, 1)
    assert counts.bad_files == [str(bad.resolve())]
    events = read_bad_image_log(dst / "zf_prepare_bad_images.jsonl")
    assert [e["path"] for e in events if e["kind"] == "skipped"] == [str(bad.resolve())]
    assert not (dst / "train" / WNIDS[0] / "notes.txt").exists() and not (dst / bad.relative_to(src)).exists()
    assert not list(dst.rglob(".*.tmp"))  # no temporary file left
    assert (dst / small.relative_to(src)).read_bytes() == small.read_bytes()  # not upscaled: copied as it is
    with Image.open(dst / large_png.relative_to(src)) as image:
        assert image.format == "PNG" and image.size == (341, 256)

    for rel in list_images(src):
        if rel.name == "bad.JPEG":
            continue
        with Image.open(src / rel) as original, Image.open(dst / rel) as copy:
            if min(original.size) > 256:
                assert copy.size == resized_size(*original.size, 256) and min(copy.size) == 256
                assert v2.Resize(256)(v2.functional.pil_to_tensor(copy)).shape[-2:] == (copy.height, copy.width)
            else:
                assert copy.size == original.size
            original, copy = original.convert("RGB"), copy.convert("RGB")
        diff = (val_crop(original) - val_crop(copy)).abs()
        # measured on such images: mean 1.2-1.6, max 9-15 of 255 (JPEG quality 95, 4:2:0, of fine grain);
        # PNG and copied files: identical
        assert diff.mean() < 2.5 and diff.max() < 32, (rel, diff.mean().item(), diff.max().item())
        if rel.suffix == ".png" or min(original.size) <= 256:
            assert diff.max() == 0

    again = prepare(src, dst, workers=2, progress=False)  # resumes: everything already there
    assert (again.done_before, again.resized, again.copied, again.bad) == (14, 0, 0, 1)


def test_zf_prepare_never_leaves_a_partial_file(tmp_path, monkeypatch):
    src = _tree(tmp_path / "imagenet")

    def fail(self, path, *args, **kwargs):
        Path(path).write_bytes(b"half an image")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "copy", workers=1, progress=False)
    assert not [p for p in (tmp_path / "copy").rglob("*") if p.is_file() and p.suffix != ".jsonl"]


def test_zf_prepare_refuses_bad_paths_before_writing(tmp_path, capsys):
    src = _tree(tmp_path / "imagenet")
    for dst in (src, src / "train" / "copy", tmp_path):
        with pytest.raises(PrepareError):
            prepare(src, dst, progress=False)
    with pytest.raises(PrepareError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "out", progress=False)
    assert not (src / "train" / "copy").exists() and not (tmp_path / "out").exists()

    assert prepare_main([str(src), str(src / "val" / "x")]) == 2
    assert "inside SRC" in capsys.readouterr().err
    assert prepare_main([str(src), str(tmp_path / "copy"), "--workers", "2", "--quiet"]) == 0
    assert "12/12 images: 12 resized, 0 copied" in capsys.readouterr().out


@pytest.mark.parametrize("size", [(500, 375), (341, 256), (1200, 900)])
def test_torchvision_decoding_gives_the_same_pixels_as_pil(tmp_path, size):
    path = save_image(tmp_path / "a.JPEG", photo_like(*size), quality=90)
    tensor = load_rgb_tensor(path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, size[1], size[0])
    assert torch.equal(tensor, v2.functional.pil_to_tensor(load_rgb(path)))  # both libjpeg-turbo
    assert torch.equal(val_crop(tensor), val_crop(load_rgb(path)))


def test_torchvision_decoding_hands_odd_and_bad_files_to_the_pil_path(tmp_path):
    good = save_image(tmp_path / "good.JPEG", photo_like(400, 300), quality=90)
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[:3000])  # libjpeg alone would fill the rest with grey
    gray = save_image(tmp_path / "gray.JPEG", photo_like(400, 300).convert("L"), quality=90)
    small = save_image(tmp_path / "small.JPEG", photo_like(200, 150), quality=90)
    log = BadImageLog(tmp_path / "bad.jsonl")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert load_rgb_tensor(truncated, log=log) is None
    with pytest.raises(BadImageError, match="truncated.JPEG"):
        load_rgb_tensor(truncated, on_bad_image="error")
    converted = load_rgb_tensor(gray, log=log)  # a PIL image: the pipeline's ToImage takes both
    assert torch.equal(v2.functional.pil_to_tensor(converted), v2.functional.pil_to_tensor(load_rgb(gray)))
    assert load_rgb_tensor(small, log=log, min_size=224).shape == (3, 150, 200)
    assert {(Path(e["path"]).name, e["kind"]) for e in read_bad_image_log(log.path)} == {
        ("truncated.JPEG", "skipped"),
        ("gray.JPEG", "converted"),
        ("small.JPEG", "small"),
    }


def test_datamodule_decode_torchvision_gives_the_default_crops_and_shares_its_mean_image(tmp_path):
    root = _tree(tmp_path / "imagenet")
    dms = {
        decode: ImageNetDataModule(root, num_classes=2, decode=decode, cache_dir=tmp_path / "cache")
        for decode in ("pil", "torchvision")
    }
    assert dms["pil"].dataset_key() == dms["torchvision"].dataset_key()
    crops = {decode: torch.stack([item[0] for item in dm.make_dataset("val", val_crop)]) for decode, dm in dms.items()}
    assert torch.equal(crops["pil"], crops["torchvision"])
    with pytest.raises(ValueError, match="cannot go with"):
        ImageNetFolder(root, "val", draft_size=256, tensor_decode=True)

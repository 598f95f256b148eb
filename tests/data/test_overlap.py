"""zf-overlap and data.exclude: ImageNet training images copied from the transfer sets (resized, re-encoded, cropped
by 5 %) are found and only they; bad roots fail naming the path, unreadable images are skipped with a warning; the
ImageNet datamodule leaves the listed files out and zf-train's summary counts them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.configs import cli_env, compose_config
from tests.helpers.fake_trees import make_caltech101, make_caltech256
from tests.helpers.images import photo_like, save_image, write_image_file
from zf_lightning.data import ImageNetDataModule
from zf_lightning.data.overlap import (
    DEFAULT_THRESHOLD,
    IMAGENET_WINDOW,
    TRANSFER_VIEWS,
    Overlap,
    dct_hashes,
    find_overlap,
    read_exclude_list,
    thumbnails,
    write_overlap,
)
from zf_lightning.utils.errors import InputError, MissingInputError

WNIDS = ("n01440764", "n01443537", "n01484850")
DISTINCT = 33  # photograph-like ImageNet images unrelated to any transfer image


@dataclass
class Trees:
    imagenet: Path
    transfer: list[Path]  # the roots given to find_overlap
    planted: dict[str, Path] = field(default_factory=dict)  # ImageNet path (relative) -> its transfer original
    unreadable: list[Path] = field(default_factory=list)
    uniform: list[Path] = field(default_factory=list)


def copy_of(image: Image.Image, crop: tuple[float, float, float, float], scale: float) -> Image.Image:
    """`image` cropped to (left, top, right, bottom) fractions of its sides, then resized by `scale`."""
    width, height = image.size
    box = (round(crop[0] * width), round(crop[1] * height), round(crop[2] * width), round(crop[3] * height))
    cropped = image.crop(box)
    return cropped.resize((round(cropped.width * scale), round(cropped.height * scale)), Image.Resampling.BICUBIC)


# (crop box, scale, JPEG quality) of the ImageNet copies: 5 % off one side, a corner, both ends, the far corner.
FORWARD = [
    ((0.05, 0.0, 1.0, 1.0), 0.6, 40),
    ((0.05, 0.05, 1.0, 1.0), 1.5, 60),
    ((0.025, 0.025, 0.975, 0.975), 0.8, 85),
    ((0.0, 0.0, 0.95, 0.95), 1.2, 30),
]


def make_trees(root: Path) -> Trees:
    """A Caltech-101 and a Caltech-256 tree (their uniform-colour images, strays and a sub-folder included) with
    photograph-like images added, and an ImageNet train/val tree of distinct photograph-like images, copies of
    some transfer images, uniform and unreadable files."""
    rng = np.random.default_rng(0)
    imagenet = root / "imagenet"
    caltech101 = make_caltech101(root / "transfer", grayscale_files=1, seed=1)
    caltech256 = make_caltech256(root / "transfer", grayscale_files=0, seed=2)
    trees = Trees(imagenet, [root / "transfer" / "caltech101", root / "transfer" / "caltech256"])
    trees.uniform = [p for p in (root / "transfer").rglob("*.jpg") if not p.name.startswith(".")]

    def imagenet_file(n: int, wnid: str | None = None, split: str = "train") -> Path:
        wnid = wnid or WNIDS[n % len(WNIDS)]
        return imagenet / split / wnid / f"{wnid}_{n}.JPEG"

    originals = []
    for n in range(8):  # photograph-like transfer images; the first 4 have a copy in ImageNet, the rest do not
        caltech = caltech101 if n % 2 else caltech256
        folder = caltech.categories_dir / caltech.classes[n % len(caltech.classes)]
        original = photo_like(160, 120, seed=n)
        originals.append(save_image(folder / f"photo_{n:04d}.jpg", original, quality=90))
        if n < len(FORWARD):
            crop, scale, quality = FORWARD[n]
            copy = save_image(imagenet_file(9000 + n), copy_of(original, crop, scale), quality=quality)
            trees.planted[copy.relative_to(imagenet).as_posix()] = originals[-1]
    # The other way round: the transfer image is the cropped copy of an ImageNet image.
    larger = save_image(imagenet_file(9100), photo_like(150, 120, seed=100), quality=90)
    with Image.open(larger) as image:
        cropped = copy_of(image, (0.0, 0.05, 1.0, 1.0), 0.7)
    trees.planted[larger.relative_to(imagenet).as_posix()] = save_image(
        caltech101.categories_dir / "Faces" / "photo_0100.jpg", cropped, quality=50
    )
    for n in range(DISTINCT):
        width, height = (int(v) for v in rng.integers(110, 170, size=2))
        save_image(imagenet_file(n), photo_like(width, height, seed=1000 + n), quality=90)
    for n, wnid in enumerate(WNIDS):  # a validation split, for the datamodule
        save_image(imagenet_file(500 + n, wnid, "val"), photo_like(96, 80, seed=2000 + n), quality=90)
    blank = imagenet_file(9200)
    Image.new("RGB", (120, 90), (30, 160, 90)).save(blank)
    trees.uniform.append(blank)
    for kind, where in (("corrupt", imagenet_file(9300)), ("truncated", caltech101.categories_dir / "Faces" / "x.jpg")):
        write_image_file(where, kind, seed=3)
        trees.unreadable.append(where)
    return trees


@pytest.fixture(scope="module")
def found(tmp_path_factory) -> tuple[Trees, Overlap, list[str]]:
    """The trees, what find_overlap found in them (one pass, shared), and the warnings it gave."""
    root = tmp_path_factory.mktemp("overlap")
    trees = make_trees(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        overlap = find_overlap(trees.imagenet, trees.transfer, progress=False, cache_dir=root / "cache")
    return trees, overlap, [str(w.message) for w in caught]


def test_every_planted_copy_is_found_with_its_original_and_nothing_else(found):
    trees, overlap, _ = found
    assert overlap.duplicates == sorted(trees.planted)
    assert {(imagenet, Path(transfer)) for imagenet, transfer, _ in overlap.pairs} == {
        (imagenet, original.resolve()) for imagenet, original in trees.planted.items()
    }
    assert all(0 <= distance <= DEFAULT_THRESHOLD for _, _, distance in overlap.pairs)
    # Every ImageNet image was seen: the distinct ones, the copies, the blank and the unreadable one.
    assert overlap.imagenet_images == DISTINCT + len(trees.planted) + 2


def test_the_threshold_has_a_margin_on_both_sides(tmp_path):
    # On the hashes themselves: 5 % crops of 8 images stay well within the threshold, 40 distinct images well out.
    imagenet_view = ((IMAGENET_WINDOW, IMAGENET_WINDOW),)

    def hashes(image: Image.Image, name: str, views: tuple) -> np.ndarray:
        return dct_hashes(thumbnails(save_image(tmp_path / name, image, quality=70), views))

    def distances(queries: np.ndarray, transfer: np.ndarray) -> np.ndarray:
        return np.bitwise_count(queries[:, None, None] ^ transfer[None]).sum(axis=-1).min(axis=-1)

    originals = [photo_like(160, 120, seed=n) for n in range(8)]
    transfer = np.stack([hashes(image, f"t{n}.jpg", TRANSFER_VIEWS) for n, image in enumerate(originals)])
    copies = [copy_of(image, FORWARD[n % len(FORWARD)][0], 0.75) for n, image in enumerate(originals)]
    queries = np.stack([hashes(image, f"c{n}.jpg", imagenet_view)[0] for n, image in enumerate(copies)])
    others = np.stack([hashes(photo_like(140, 110, seed=500 + n), f"o{n}.jpg", imagenet_view)[0] for n in range(40)])
    assert np.diag(distances(queries, transfer)).max() <= DEFAULT_THRESHOLD - 4
    assert distances(others, transfer).min() > DEFAULT_THRESHOLD + 4


def test_unreadable_images_are_skipped_with_a_warning_naming_them(found):
    trees, overlap, messages = found
    assert sorted(overlap.unreadable) == sorted(
        [str(trees.imagenet / "train" / WNIDS[0] / f"{WNIDS[0]}_9300.JPEG"), str(trees.unreadable[1].resolve())]
    )
    for path in overlap.unreadable:
        assert any(message.startswith(f"skipping unreadable image {path}: ") for message in messages), path


def test_uniform_images_are_not_matched_whatever_their_colour(found):
    # Caltech's fake images are single colours, as is one ImageNet image: with nothing to hash, none matches.
    trees, overlap, _ = found
    assert sorted(overlap.uniform) == sorted(
        str(p.resolve()) if "transfer" in p.parts else str(p) for p in trees.uniform
    )
    assert overlap.transfer_images == len(trees.uniform) - 1 + 9 + 1  # uniform, photographs, the unreadable one


def test_the_list_and_the_pairs_are_written_atomically_and_sorted(found, tmp_path):
    trees, overlap, _ = found
    listed, pairs = write_overlap(overlap, tmp_path / "out" / "overlap.txt")
    assert pairs == tmp_path / "out" / "overlap.csv"
    assert listed.read_text().splitlines() == sorted(trees.planted)
    rows = list(csv.reader(pairs.read_text().splitlines()))
    assert rows[0] == ["imagenet_path", "transfer_path", "distance"]
    assert [(imagenet, Path(transfer)) for imagenet, transfer, _ in rows[1:]] == sorted(
        (imagenet, original.resolve()) for imagenet, original in trees.planted.items()
    )
    assert sorted(p.name for p in listed.parent.iterdir()) == ["overlap.csv", "overlap.txt"]  # no temporary left
    with pytest.raises(InputError, match=r"--out .*pairs\.csv: expected a list file not ending in \.csv"):
        write_overlap(overlap, tmp_path / "pairs.csv")


@pytest.mark.parametrize(
    "case, error, message",
    [
        (
            "no imagenet",
            MissingInputError,
            r"ImageNet root {imagenet} does not exist .*{imagenet}/train/<wnid>/\*\.JPEG",
        ),
        ("no train", MissingInputError, r"ImageNet root {imagenet} has no train folder"),
        ("no transfer", MissingInputError, r"transfer root {transfer} does not exist or is not a directory"),
        ("no images", MissingInputError, r"transfer root {transfer} holds no image files"),
        ("inside imagenet", InputError, r"transfer root {transfer} overlaps the ImageNet training folder"),
    ],
)
def test_a_bad_root_fails_before_any_image_is_read_naming_it(tmp_path, case, error, message):
    imagenet, transfer = tmp_path / "imagenet", tmp_path / "caltech"
    save_image(imagenet / "train" / WNIDS[0] / "a.JPEG", photo_like(64, 48))
    save_image(transfer / "c" / "a.jpg", photo_like(64, 48))
    if case == "no imagenet":
        imagenet = tmp_path / "missing"
    elif case == "no train":
        imagenet = transfer
    elif case == "no transfer":
        transfer = tmp_path / "missing"
    elif case == "no images":
        transfer = tmp_path / "empty"
        (transfer / "sub").mkdir(parents=True)
        (transfer / "notes.txt").write_text("not an image")
    else:
        transfer = imagenet / "train"
    with pytest.raises(error, match=message.format(imagenet=imagenet, transfer=transfer)):
        find_overlap(imagenet, [transfer], progress=False, cache_dir=tmp_path / "cache")


# ---- data.exclude ---------------------------------------------------------------------------------------------


def imagenet_datamodule(root: Path, tmp_path: Path, **options) -> ImageNetDataModule:
    return ImageNetDataModule(
        root, num_classes=3, resize_size=72, crop_size=64, batch_size=4, num_workers=0, cache_dir=tmp_path, **options
    )


def training_files(datamodule: ImageNetDataModule) -> set[str]:
    return {Path(path).relative_to(datamodule.root).as_posix() for path, _ in datamodule.datasets["train"].samples}


@pytest.mark.filterwarnings("ignore:skipping unreadable image")  # read for the mean image
def test_data_exclude_leaves_out_exactly_the_listed_training_files(found, tmp_path):
    trees, overlap, _ = found
    listed, _ = write_overlap(overlap, tmp_path / "overlap.txt")
    everything = imagenet_datamodule(trees.imagenet, tmp_path / "all")
    everything.setup("fit")
    assert everything.excluded is None
    without = imagenet_datamodule(trees.imagenet, tmp_path / "without", exclude=str(listed))
    without.setup("fit")
    assert training_files(everything) - training_files(without) == set(trees.planted)
    assert training_files(without) < training_files(everything)
    assert without.excluded == len(trees.planted)
    assert len(without.datasets["train"]) == len(everything.datasets["train"]) - len(trees.planted)
    assert without.datasets["train"].targets == [label for _, label in without.datasets["train"].samples]
    assert len(without.datasets["val"]) == len(everything.datasets["val"])  # only training files are left out
    assert without.dataset_key() != everything.dataset_key()  # its mean image is cached apart


def test_data_exclude_counts_only_listed_files_that_exist_and_warns_about_the_others(found, tmp_path):
    trees, _, _ = found
    first = sorted(trees.planted)[0]
    exclude = tmp_path / "exclude.txt"
    exclude.write_text(f"{first}\n\ntrain/{WNIDS[0]}/not_there.JPEG\n")
    datamodule = imagenet_datamodule(trees.imagenet, tmp_path, exclude=exclude)
    with pytest.warns(UserWarning, match=r"1 of 2 listed files are not training images .*not_there\.JPEG"):
        assert datamodule.excluded == 1  # counted without setup: the file list is built for it


def test_a_missing_or_malformed_exclude_file_fails_when_the_datamodule_is_made(found, tmp_path):
    trees, _, _ = found
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(MissingInputError, match=rf"data.exclude='{missing}': no such file; expected a list"):
        imagenet_datamodule(trees.imagenet, tmp_path, exclude=str(missing))
    absolute = tmp_path / "absolute.txt"
    absolute.write_text(f"train/{WNIDS[0]}/a.JPEG\n{trees.imagenet}/train/{WNIDS[0]}/b.JPEG\n")
    with pytest.raises(InputError, match=r"line 2: .* is not a path relative to data.root"):
        read_exclude_list(absolute)


def test_zf_train_records_how_many_training_files_were_excluded(found, tmp_path):
    from zf_lightning.cli.train import train

    trees, overlap, _ = found
    listed, _ = write_overlap(overlap, tmp_path / "overlap.txt")
    overrides = [
        "data=imagenet",
        f"data.root={trees.imagenet}",
        f"data.exclude={listed}",
        "data.num_classes=3",
        "data.resize_size=72",
        "data.crop_size=64",
        "data.batch_size=8",
        "data.num_workers=0",
        "data.pin_memory=false",
        "data.persistent_workers=false",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model.net.width_multiplier=0.125",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
        "~callbacks.progress_bar",
        "~callbacks.feature_evolution",
    ]
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unreadable training image, replaced by the next one
        summary = train(compose_config("train", out, overrides))
    assert summary["excluded"] == len(trees.planted)
    assert json.loads((out / "summary.json").read_text())["excluded"] == len(trees.planted)


# ---- the console script ---------------------------------------------------------------------------------------


def zf_overlap(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "zf-overlap"
    env = {**cli_env(tmp_path), "ZF_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([str(script), *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_zf_overlap_writes_the_list_and_the_pairs_with_worker_processes(found, tmp_path):
    trees, overlap, _ = found
    out = tmp_path / "lists" / "overlap.txt"
    done = zf_overlap([str(trees.imagenet), *map(str, trees.transfer), "--out", str(out), "--workers", "2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines() == sorted(trees.planted)
    assert out.with_suffix(".csv").read_text().splitlines()[1:] == [f"{i},{t},{d}" for i, t, d in overlap.pairs]
    assert f"zf-overlap: wrote {out} ({len(trees.planted)} of {overlap.imagenet_images} ImageNet" in done.stdout
    assert f"and {out.with_suffix('.csv')} ({len(trees.planted)} pair(s)" in done.stdout
    assert "2 unreadable images skipped" in done.stdout
    for path in overlap.unreadable:
        assert f"zf-overlap: warning: skipping unreadable image {path}: " in done.stderr
    assert "Traceback" not in done.stderr


def test_zf_overlap_on_a_missing_root_says_so_in_one_line_and_exits_2(found, tmp_path):
    trees, _, _ = found
    missing = tmp_path / "no-imagenet"
    done = zf_overlap([str(missing), str(trees.transfer[0]), "--out", "overlap.txt"], tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"zf-overlap: error: ImageNet root {missing} does not exist or is not a directory; expected ImageNet's "
        f"training images in {missing}/train/<wnid>/*.JPEG"
    ]
    assert "Traceback" not in done.stderr and not (tmp_path / "overlap.txt").exists()

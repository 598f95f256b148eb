"""Input pipeline speed: images/s per worker of the `imagenet` datamodule's training transform on full-size JPEGs.

    .venv/bin/python bench/bench_input_pipeline.py [--images 400] [--repeats 3] [--dir DIR] [--loader]

Generates (once, into --dir; default a temporary folder) an ImageNet-layout tree of photo-like JPEGs (smooth
multi-scale noise, gradients and grain, quality 90) at ImageNet-like sizes (mostly about 500x375, one in six
800-1600 px on the long side), writes its `zf-prepare` copy (short side 256), then times one worker's work:
a loop over the training dataset with torch on one thread, as in a DataLoader worker. Arms:

  (a) baseline: plain PIL open, convert RGB, PIL bilinear resize to short side 256, centre crop 256, to a float
      tensor, mean image subtracted, random 224 crop and flip (the same output as the datamodule's)
  (b) the datamodule, data.decode=pil (the default)
  (c) the datamodule, data.decode=reduced
  (d) the datamodule, data.decode=pil, on the zf-prepare copy (data.root=<copy>)
  (e) the datamodule, data.decode=torchvision (torchvision.io straight to uint8 tensors)
  (f) the datamodule, data.decode=torchvision, on the zf-prepare copy
  reduced + prepared is not timed: on the copy every short side is 256, so there is nothing to reduce.

Arms alternate (rotated order each repeat) so that drifting load hits them alike; medians are reported, with
the ratio to (a). `--loader` also times the best option through the datamodule's DataLoader with 1 and 2 workers.
`--profile` splits (a) and (b)/(d) per stage: decode, resize, to tensor, float + mean, crop + flip.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_average

from zf_lightning.data.datamodules import ImageNetDataModule  # noqa: E402
from zf_lightning.data.prepare import prepare  # noqa: E402

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
RESIZE, CROP = 256, 224


def photo_like(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Random content that compresses like a photograph: smooth blobs at several scales, a gradient, grain."""
    image = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((3, 70.0), (12, 35.0), (48, 18.0), (160, 8.0)):
        small = rng.normal(0.0, 1.0, (max(2, cells * height // width), cells, 3))
        small = np.clip(small * 60 + 128, 0, 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC), np.float32)
        image += (up - 128) * (amplitude / 60)
    ramp = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :, None] * rng.normal(0, 30, 3).astype(np.float32)
    image += 128 + ramp + rng.normal(0, 3, image.shape).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    if rng.random() < 1 / 6:  # a larger photo
        long, short = int(rng.integers(800, 1601)), 0
        short = int(long * rng.uniform(0.66, 0.8))
    else:  # ImageNet's typical 500 x 333..375 (or 400-500 on the long side)
        long = 500 if rng.random() < 0.8 else int(rng.integers(400, 500))
        short = int(long * rng.choice([0.75, 0.75, 0.666, 0.8]))
    return (long, short) if rng.random() < 0.75 else (short, long)


def make_dataset(root: Path, n: int, seed: int = 0) -> None:
    """`n` JPEGs as <root>/train/<wnid>/*.JPEG (plus 2 per class in val); skipped when already there."""
    marker = root / f".complete_{n}_{seed}"
    if marker.is_file():
        return
    rng = np.random.default_rng(seed)
    for split, count in (("train", n), ("val", 2 * len(WNIDS))):
        for i in range(count):
            wnid = WNIDS[i % len(WNIDS)]
            path = root / split / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo_like(rng, *image_size(rng)).save(path, "JPEG", quality=90)
    marker.touch()


def baseline_transform(mean_image: torch.Tensor):
    """(a): plain PIL decode and resize, then the same crops and normalisation as the paper preset."""

    def load(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            image = image.convert("RGB")
        w, h = image.size
        size = (RESIZE, int(RESIZE * h / w)) if w <= h else (int(RESIZE * w / h), RESIZE)
        image = image.resize(size, Image.BILINEAR)
        left, top = (size[0] - RESIZE) // 2, (size[1] - RESIZE) // 2
        image = image.crop((left, top, left + RESIZE, top + RESIZE))
        x = F.pil_to_tensor(image).float() - mean_image
        i, j = (int(v) for v in torch.randint(0, RESIZE - CROP + 1, (2,)))
        x = x[:, i : i + CROP, j : j + CROP]
        return x.flip(-1) if torch.rand(1) < 0.5 else x

    return load


def datamodule(root: Path, decode: str, mean_image: torch.Tensor, cache: Path, **kwargs) -> ImageNetDataModule:
    dm = ImageNetDataModule(
        root,
        num_classes=len(WNIDS),
        decode=decode,
        cache_dir=cache,
        resize_size=RESIZE,
        crop_size=CROP,
        bad_image_log=None,
        **kwargs,
    )
    dm.mean_image = mean_image  # given: the bench times the per-image work, not the one-time mean image
    return dm


def one_pass(arm) -> float:
    """Images/s over the whole training set."""
    items, started = arm(), time.perf_counter()
    n = 0
    for _ in items:
        n += 1
    return n / (time.perf_counter() - started)


def arms(root: Path, prepared: Path, mean_image: torch.Tensor, cache: Path) -> dict:
    files = sorted(str(p) for p in (root / "train").rglob("*.JPEG"))
    baseline = baseline_transform(mean_image)

    def over_dataset(dm):
        dataset = dm.make_dataset("train", dm.transforms()["train"])
        return lambda: (dataset[i] for i in range(len(dataset)))

    return {
        "(a) baseline: PIL open + resize": lambda: (baseline(f) for f in files),
        "(b) datamodule, decode=pil": over_dataset(datamodule(root, "pil", mean_image, cache)),
        "(c) datamodule, decode=reduced": over_dataset(datamodule(root, "reduced", mean_image, cache)),
        "(d) datamodule, decode=pil, zf-prepare copy": over_dataset(datamodule(prepared, "pil", mean_image, cache)),
        "(e) datamodule, decode=torchvision": over_dataset(datamodule(root, "torchvision", mean_image, cache)),
        "(f) datamodule, decode=torchvision, zf-prepare copy": over_dataset(
            datamodule(prepared, "torchvision", mean_image, cache)
        ),
    }


def profile(root: Path, prepared: Path, mean_image: torch.Tensor) -> None:
    """Per-stage milliseconds per image, medians over the files."""
    stages = {}

    def timed(name, function, *args):
        started = time.perf_counter()
        out = function(*args)
        stages.setdefault(name, []).append(1e3 * (time.perf_counter() - started))
        return out

    def decode(path):
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")

    crop = v2.Compose([v2.RandomCrop(CROP), v2.RandomHorizontalFlip()])
    for label, tree in (("original", root), ("zf-prepare copy", prepared)):
        stages.clear()
        for path in sorted((tree / "train").rglob("*.JPEG")):
            image = timed("decode (PIL)", decode, str(path))
            timed("PIL bilinear resize (a)", image.resize, (RESIZE, RESIZE), Image.BILINEAR)
            x = timed("ToImage", F.pil_to_tensor, image)
            x = timed("v2 Resize uint8 (b)", F.resize, x, [RESIZE])
            x = timed("CenterCrop", F.center_crop, x, [RESIZE])
            x = timed("ToDtype float32", F.to_dtype, x, torch.float32)
            x = timed("subtract mean", torch.sub, x, mean_image)
            timed("RandomCrop + flip", crop, x)
        print(
            f"  per-stage medians on the {label} (ms/image): "
            + ", ".join(f"{name} {statistics.median(v):.2f}" for name, v in stages.items())
        )


def loader_rate(dm: ImageNetDataModule, workers: int, passes: int = 2) -> float:
    dm.num_workers, dm.persistent_workers = workers, True
    dm.datasets.clear()
    dm.setup("fit")
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up: starts the workers
        pass
    started, n = time.perf_counter(), 0
    for _ in range(passes):
        for images, _ in loader:
            n += len(images)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="training images generated (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="passes per arm, interleaved (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated images here (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a DataLoader worker)")
    parser.add_argument(
        "--loader", action="store_true", help="also time the best option through the DataLoader, 1 and 2 workers"
    )
    parser.add_argument("--profile", action="store_true", help="also print per-stage times")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*smaller than the.*")

    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        root, prepared, cache = base / "imagenet", base / "imagenet_256", Path(tmp) / "cache"
        started = time.perf_counter()
        make_dataset(root, args.images)
        generated = time.perf_counter() - started
        started = time.perf_counter()
        counts = prepare(root, prepared, size=RESIZE, workers=os.cpu_count() or 1, progress=False)
        prepared_s = time.perf_counter() - started

        print(
            f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
            f"python {platform.python_version()} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
            f"Pillow {PIL.__version__}"
        )
        files = sorted((root / "train").rglob("*.JPEG"))
        sizes = [Image.open(p).size for p in files]
        short = np.array([min(s) for s in sizes])
        mb = sum(p.stat().st_size for p in files) / 2**20
        mb_prepared = sum(p.stat().st_size for p in (prepared / "train").rglob("*.JPEG")) / 2**20
        print(
            f"data: {len(files)} train JPEGs in {root} (generated in {generated:.1f} s), median "
            f"{int(np.median([s[0] for s in sizes]))}x"
            f"{int(np.median([s[1] for s in sizes]))}, short side >= {2 * RESIZE} (reducible by decode=reduced): "
            f"{int((short >= 2 * RESIZE).sum())}, {mb:.1f} MiB; zf-prepare copy {mb_prepared:.1f} MiB "
            f"({counts.resized} resized, {counts.copied} copied, {counts.done_before} already done; {prepared_s:.1f} s)"
        )
        print(
            f"timing: one process, torch threads {torch.get_num_threads()}, a pass = the whole training set through "
            f"the "
            f"train transform (decode, resize, crops, mean image); {args.repeats} passes per arm, interleaved, after "
            f"a warm-up pass"
        )
        print(f"load average before: {load_average()}")

        mean_image = torch.rand(3, RESIZE, RESIZE, generator=torch.Generator().manual_seed(0)) * 255
        torch.manual_seed(0)
        timed = arms(root, prepared, mean_image, cache)
        rates: dict[str, list[float]] = {name: [] for name in timed}
        for arm in timed.values():
            one_pass(arm)  # warm-up: page cache, imports, allocator
        names = list(timed)
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in order:
                rates[name].append(one_pass(timed[name]))
            print(
                f"  repeat {repeat}: "
                + ", ".join(f"{name.split()[0]} {rates[name][-1]:.0f}" for name in names)
                + " images/s"
            )
        print(f"load average after: {load_average()} (other processes on the machine skew all arms)")

        base_rate = statistics.median(rates[names[0]])
        for name in names:
            median = statistics.median(rates[name])
            print(
                f"{name:<46} median {median:7.1f} images/s per worker  {median / base_rate:5.2f}x (a)  "
                f"(all: {', '.join(f'{r:.0f}' for r in rates[name])})"
            )
        best = max(names[1:], key=lambda name: statistics.median(rates[name]))
        ratio = statistics.median(rates[best]) / base_rate
        print(
            f"best CPU option: {best} = {ratio:.2f}x the baseline's images/s per worker; goal >= 3x: "
            f"{'met' if ratio >= 3 else 'NOT met'}"
        )

        if args.profile:
            profile(root, prepared, mean_image)
        if args.loader:
            best_root = prepared if "prepare" in best else root
            decode = next(d for d in ("reduced", "torchvision", "pil") if f"decode={d}" in best)
            dm = datamodule(best_root, decode, mean_image, cache, batch_size=32)
            for workers in (1, 2):
                rate = loader_rate(dm, workers)
                print(
                    f"DataLoader, {best.split()[0]} option, {workers} worker(s), batch 32: {rate:.0f} images/s "
                    f"({rate / workers:.0f} per worker)"
                )


if __name__ == "__main__":
    main()

"""ZFNet training throughput with the inputs already in device memory, and the model FLOPs utilisation (MFU).

    python bench/bench_gpu_training.py                              # on a GPU: every fast-path combination
    python bench/bench_gpu_training.py --device cpu --batch-size 8 --steps 3 --input-size 64 --width 0.25
    python bench/bench_gpu_training.py --end-to-end --data /scratch/zf_bench  # the real pipeline, decode on the GPU

Each configuration trains the same network (the module's SGD with weight decay on weights, filter
renormalisation after every step) on one fixed random batch, so that only the arithmetic and the framework
are timed: no decoding, no host-to-device copies. MFU = training FLOPs per image (forward + backward, counted by
torch.utils.flop_counter on one step) x images/s / the device's peak dense bf16 FLOP/s (--peak-tflops; H100
SXM and H200: 989). Configurations run interleaved, `--repeats` times, and the medians are printed.
Goal (issue 7): >= 15,000 images/s for ZFNet at 224x224 on one H100.

`--end-to-end` also times the real input pipeline with the fastest configuration: generated photo-like JPEGs
(bench_input_pipeline.py's, kept in --data), their zf-prepare copy, and the `imagenet` datamodule's training
loader with `--workers` workers, for data.decode=torchvision (decoded in the workers) and data.decode=gpu
(decoded, resized and cropped on the device in batches), interleaved with the in-memory rate of the same
configuration. Goal: end-to-end >= 0.8 of the in-memory rate with decode=gpu on the zf-prepare copy.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_average  # noqa: E402

from zf_lightning.data.datamodules import ImageNetDataModule  # noqa: E402
from zf_lightning.data.device_decode import DeviceBatch, DeviceDecoder  # noqa: E402
from zf_lightning.data.prepare import prepare  # noqa: E402
from zf_lightning.models import ImageClassifier  # noqa: E402
from zf_lightning.models.classifier import renormalize_filters_  # noqa: E402

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
GOAL_IMAGES_PER_S = 15_000
GOAL_END_TO_END = 0.8


def build(args, channels_last: bool, compile_net: bool, device: torch.device):
    net = {"arch": "zfnet", "num_classes": 1000, "input_size": args.input_size, "width_multiplier": args.width}
    module = ImageClassifier(net, lr_scheduler=None, channels_last=channels_last).to(device)
    optimizer = module.configure_optimizers()
    if compile_net:
        module.net.compile()
    return module, optimizer


def step(module, optimizer, images, labels, autocast) -> None:
    with autocast():
        loss = F.cross_entropy(module(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    renormalize_filters_(module.net, 0.1)


def training_flops_per_image(args, device) -> float:
    module, optimizer = build(args, False, False, device)
    images = torch.randn(2, 3, args.input_size, args.input_size, device=device)
    labels = torch.zeros(2, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(module(images), labels)
        loss.backward()
    return counter.get_total_flops() / 2


def images_per_second(args, config, device, next_batch=None) -> float:
    """Training images/s of `config` over `args.steps` steps; batches from `next_batch()` (default: one fixed
    batch already on the device)."""
    precision, channels_last, compile_net = config
    module, optimizer = build(args, channels_last, compile_net, device)
    if next_batch is None:
        images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
        labels = torch.randint(0, 1000, (args.batch_size,), device=device)
        next_batch = lambda: (images, labels)  # noqa: E731
    autocast = (
        (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    )
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):  # compilation, cudnn autotuning, allocator warm-up, loader workers
        step(module, optimizer, *next_batch(), autocast)
    sync()
    started, count = time.perf_counter(), 0
    for _ in range(args.steps):
        images, labels = next_batch()
        step(module, optimizer, images, labels, autocast)
        count += len(labels)
    sync()
    return count / (time.perf_counter() - started)


def pipeline_batches(root: Path, decode: str, args, device: torch.device, mean_image: torch.Tensor, cache: Path):
    """`next_batch()` over the `imagenet` datamodule's training loader, going round epochs, batches on `device`."""
    resize = mean_image.shape[-1]
    dm = ImageNetDataModule(
        root,
        num_classes=4,
        decode=decode,
        batch_size=args.batch_size,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
        resize_size=resize,
        crop_size=args.input_size,
        cache_dir=cache,
        bad_image_log=None,
    )
    dm.mean_image = mean_image  # given: the one-time mean image is not what is timed
    dm.setup("fit")
    loader = dm.train_dataloader()
    decoder = DeviceDecoder(resize, args.input_size, mean_image, on_bad_image="skip")

    def forever():
        while True:
            yield from loader

    batches = forever()

    def next_batch():
        batch = next(batches)
        if isinstance(batch, DeviceBatch):  # what the datamodule's on_before_batch_transfer does under a Trainer
            images, labels = decoder(batch, device)
        else:
            images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    return next_batch


def end_to_end(args, device, best_config, in_memory_best: float) -> None:
    from bench_input_pipeline import make_dataset  # bench/ is on the path when run as a script

    warnings.filterwarnings("ignore", message=".*smaller than the.*")
    resize = round(args.input_size * 256 / 224)  # the paper's 256 for a 224 crop
    with tempfile.TemporaryDirectory() as tmp:
        base = args.data or Path(tmp)
        root, prepared, cache = base / "imagenet", base / f"imagenet_{resize}", Path(tmp) / "cache"
        started = time.perf_counter()
        make_dataset(root, args.images)
        prepare(root, prepared, size=resize, workers=os.cpu_count() or 1, progress=False)
        print(
            f"\nend to end: {args.images} generated JPEGs (about 500x375) and their zf-prepare copy in {base} "
            f"({time.perf_counter() - started:.0f} s); loader workers {args.workers}, pin_memory "
            f"{device.type == 'cuda'}; "
            f"configuration {best_config}; load average {load_average()}"
        )
        mean_image = torch.rand(3, resize, resize) * 255
        arms = {"in GPU memory" if device.type == "cuda" else "in memory": None}
        for decode in ("torchvision", "gpu"):
            arms[f"decode={decode}, zf-prepare copy"] = pipeline_batches(
                prepared, decode, args, device, mean_image, cache
            )
        rates: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, next_batch in arms.items():
                rates[name].append(images_per_second(args, best_config, device, next_batch))
        reference = statistics.median(rates[next(iter(arms))])
        print(f"{'inputs':34} {'images/s':>10} {'vs in memory':>13}")
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"{name:34} {rate:10.1f} {rate / reference:12.2f}x")
        ratio = statistics.median(rates["decode=gpu, zf-prepare copy"]) / reference
        verdict = "met" if ratio >= GOAL_END_TO_END else "not met"
        print(
            f"decode=gpu end to end: {ratio:.2f} of the in-memory rate; goal >= {GOAL_END_TO_END} on one H100: "
            f"{verdict}"
            + ("" if device.type == "cuda" else " (decoded on the CPU here: the goal is for a GPU)")
            + f"; best in-memory rate of the table above {in_memory_best:.1f} images/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256, help="per device")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (1.0: the paper's ZFNet)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s of the device")
    parser.add_argument(
        "--no-compile", action="store_true", help="leave torch.compile out (no C compiler, or to save time)"
    )
    parser.add_argument(
        "--end-to-end", action="store_true", help="also time the real input pipeline on generated JPEGs"
    )
    parser.add_argument("--images", type=int, default=2048, help="JPEGs generated for --end-to-end")
    parser.add_argument("--data", type=Path, default=None, help="keep the generated JPEGs here (default: a temp dir)")
    parser.add_argument(
        "--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader workers for --end-to-end"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    )
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(
        f"device: {name}; torch {torch.__version__}; ZFNet width {args.width} at {args.input_size}px, batch "
        f"{args.batch_size}"
    )
    flops = training_flops_per_image(args, device)
    print(f"training FLOPs per image (forward + backward): {flops / 1e9:.2f} GFLOP")

    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]
    configs = list(itertools.product(precisions, [False, True], [False] if args.no_compile else [False, True]))
    results: dict[tuple, list[float]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for config in configs:
            results[config].append(images_per_second(args, config, device))

    baseline = statistics.median(results[configs[0]])
    print(f"\n{'precision':9} {'channels_last':13} {'compile':7} {'images/s':>10} {'vs fp32':>8} {'MFU':>6}")
    for config, values in results.items():
        rate = statistics.median(values)
        mfu = f"{100 * rate * flops / (peak * 1e12):5.1f}%" if peak else "  n/a"
        print(f"{config[0]:9} {str(config[1]):13} {str(config[2]):7} {rate:10.1f} {rate / baseline:7.2f}x {mfu}")
    best_config = max(results, key=lambda config: statistics.median(results[config]))
    best = statistics.median(results[best_config])
    verdict = "met" if best >= GOAL_IMAGES_PER_S else "not met"
    print(
        f"\nbest: {best:.1f} images/s; goal >= {GOAL_IMAGES_PER_S} images/s at 224px on one H100: {verdict}"
        + ("" if "H100" in name else " (not an H100: the goal does not apply to this device)")
    )
    if args.end_to_end:
        end_to_end(args, device, best_config, best)


if __name__ == "__main__":
    main()

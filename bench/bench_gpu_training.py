"""ZFNet training throughput with the inputs already in device memory, and the model FLOPs utilisation (MFU).

    python bench/bench_gpu_training.py                              # on a GPU: every fast-path combination
    python bench/bench_gpu_training.py --device cpu --batch-size 8 --steps 3 --input-size 64 --width 0.25

Each configuration trains the same network (the module's SGD with weight decay on weights, filter
renormalisation after every step) on one fixed random batch, so that only the arithmetic and the framework
are timed: no decoding, no host-to-device copies. MFU = training FLOPs per image (forward + backward, counted by
torch.utils.flop_counter on one step) x images/s / the device's peak dense bf16 FLOP/s (--peak-tflops; H100
SXM and H200: 989). Configurations run interleaved, `--repeats` times, and the medians are printed.
Goal (issue 7): >= 15,000 images/s for ZFNet at 224x224 on one H100.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from zf_lightning.models import ImageClassifier
from zf_lightning.models.classifier import renormalize_filters_

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
GOAL_IMAGES_PER_S = 15_000


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


def images_per_second(args, config, device) -> float:
    precision, channels_last, compile_net = config
    module, optimizer = build(args, channels_last, compile_net, device)
    images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
    labels = torch.randint(0, 1000, (args.batch_size,), device=device)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):  # compilation, cudnn autotuning, allocator warm-up
        step(module, optimizer, images, labels, autocast)
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step(module, optimizer, images, labels, autocast)
    sync()
    return args.steps * args.batch_size / (time.perf_counter() - started)


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
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out (no C compiler, or to save time)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    print(f"device: {name}; torch {torch.__version__}; ZFNet width {args.width} at {args.input_size}px, batch {args.batch_size}")
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
    best = max(statistics.median(v) for v in results.values())
    verdict = "met" if best >= GOAL_IMAGES_PER_S else "not met"
    print(f"\nbest: {best:.1f} images/s; goal >= {GOAL_IMAGES_PER_S} images/s at 224px on one H100: {verdict}"
          + ("" if "H100" in name else " (not an H100: the goal does not apply to this device)"))


if __name__ == "__main__":
    main()

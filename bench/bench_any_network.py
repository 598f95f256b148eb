"""Top-9 projections on networks trained elsewhere: the engine against Captum, one neuron per call, side by side.

For torchvision's resnet18 (`layer4`: the general path, autograd with the rule at every nn.ReLU) and vgg16
(conv5_3's ReLU, `features.29`: a paper layer of an nn.Sequential `features`, so the fast windowed path), both
with seeded random weights:

1. the scan: `find_top_activations` over `--images` images at 224x224 for `--maps` maps of the layer (timed and
   printed apart, not in the ratio: a Captum user needs the same scan to know which neurons to attribute);
2. the projections of the top-`--k` of every map: the engine's `project_all_top_activations` against Captum's
   `NeuronDeconvolution` (one `attribute` call per (image, neuron), seeded with 1, so times the activation).

Captum takes ~0.05-1 s per call on a small CPU, so it runs on a seeded random sample of the projections
(`--captum-sample`, `--full` for all) and its time per projection is extrapolated to the full count (said so in
the table). Every sampled projection is checked equal to the engine's (rtol 1e-3, atol 1e-5 of the largest
value). Goal: the engine at least 3x faster than Captum on both networks.

Usage:  python bench/bench_any_network.py [--images 256] [--maps 64] [--k 9] [--captum-sample 48] [--full]
                                           [--networks resnet18,vgg16] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import time
import warnings

import torch
import torchvision
from _common import load_average
from torch import nn

from zf_lightning.data.synthetic import SyntheticShapes
from zf_lightning.deconv import Deconvnet
from zf_lightning.deconv.maps import draw_maps
from zf_lightning.deconv.topk import find_top_activations, project_all_top_activations

GOAL = 3.0
NETWORKS = {
    # name: (builder, layer as the engine takes it, the module Captum attributes to)
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), "layer4", "layer4"),
    "vgg16": (lambda: torchvision.models.vgg16(weights=None), "features.29", "features.29"),
}


def make_images(count: int, seed: int) -> torch.Tensor:
    """`count` SyntheticShapes images at 224x224, normalised with ImageNet's mean and std (torchvision's recipe)."""
    dataset = SyntheticShapes(
        "train", num_classes=100, images_per_class=max(1, -(-count // 100)), image_size=224, seed=seed
    )
    images = torch.stack([dataset[i][0] for i in range(count)]).float().div_(255)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    return (images - mean) / std


def clock(device: torch.device) -> float:
    """perf_counter after the device's queued work is done (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def captum_model(net: nn.Module) -> nn.Module:
    """Captum's ReLU hooks need ReLUs that are not in place."""
    model = copy.deepcopy(net)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


def run_network(name: str, images: torch.Tensor, args: argparse.Namespace) -> dict:
    from captum.attr import NeuronDeconvolution

    build, layer, captum_layer = NETWORKS[name]
    torch.manual_seed(args.seed)
    net = build().eval().to(images.device)
    deconv = Deconvnet(net)
    maps = draw_maps(deconv.num_maps(layer), args.maps, args.seed, layer)
    path = "fast (windowed)" if isinstance(deconv._target(layer).number, int) else "general (autograd)"

    started = clock(images.device)
    batches = ((images[i : i + 32], torch.arange(i, min(i + 32, len(images)))) for i in range(0, len(images), 32))
    top = find_top_activations(deconv, batches, {layer: maps}, k=args.k)[layer]
    scan_s = clock(images.device) - started

    started = clock(images.device)
    projected = project_all_top_activations(deconv, {layer: top}, lambda idx: images[idx])[layer]
    engine_s = clock(images.device) - started
    count = top.values.numel()

    flat = [(m, j) for m in range(len(maps)) for j in range(args.k)]
    generator = torch.Generator().manual_seed(args.seed)
    sample = (
        flat if args.full else [flat[i] for i in torch.randperm(len(flat), generator=generator)[: args.captum_sample]]
    )
    model = captum_model(net)
    attribution = NeuronDeconvolution(model, model.get_submodule(captum_layer))
    worst, checked = 0.0, 0
    captum_s = 0.0
    for position, (m, j) in enumerate(sample):
        image = images[int(top.image_index[m, j])][None]
        neuron = (int(top.maps[m]), int(top.rows[m, j]), int(top.cols[m, j]))
        started = clock(images.device)
        expected = attribution.attribute(image, neuron_selector=neuron)[0] * top.values[m, j]
        if position:  # the first call warms up (allocations, hooks): not timed
            captum_s += clock(images.device) - started
        field = projected.receptive_field.size
        canvas = torch.zeros_like(expected)
        window_top, window_left = int(projected.window_top[m, j]), int(projected.window_left[m, j])
        # The engine's window at its place in the image (parts in the padding dropped), as Captum's whole image.
        rows = slice(max(window_top, 0), min(window_top + field[0], canvas.shape[1]))
        cols = slice(max(window_left, 0), min(window_left + field[1], canvas.shape[2]))
        canvas[:, rows, cols] = projected.projections[m, j][
            :, rows.start - window_top : rows.stop - window_top, cols.start - window_left : cols.stop - window_left
        ]
        scale = float(expected.abs().max())
        if scale > 0:
            torch.testing.assert_close(canvas, expected, rtol=1e-3, atol=1e-5 * scale)
            worst = max(worst, float((canvas - expected).abs().max()) / scale)
            checked += 1
    timed = max(1, len(sample) - 1)
    captum_full_s = captum_s / timed * count
    return {
        "name": name,
        "layer": layer,
        "path": path,
        "count": count,
        "scan_s": scan_s,
        "engine_s": engine_s,
        "captum_per_s": captum_s / timed,
        "captum_full_s": captum_full_s,
        "sample": len(sample),
        "checked": checked,
        "worst": worst,
        "ratio": captum_full_s / engine_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--maps", type=int, default=64)
    parser.add_argument("--k", type=int, default=9)
    parser.add_argument("--captum-sample", type=int, default=48)
    parser.add_argument("--full", action="store_true", help="every projection through Captum, no extrapolation")
    parser.add_argument("--networks", default="resnet18,vgg16")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Setting backward hooks")  # captum, on every call
    import captum

    print(f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"platform: {platform.platform()}; os.cpu_count()={os.cpu_count()}; threads={torch.get_num_threads()}")
    print(f"python:   {platform.python_version()}; torch {torch.__version__}; captum {captum.__version__}")
    print(f"load:     {load_average()} (before)")
    images = make_images(args.images, args.seed).to(args.device)
    if images.device.type == "cuda":
        print(f"device:   {torch.cuda.get_device_name(images.device)}")
    print(f"data:     {args.images} SyntheticShapes images 224x224, ImageNet mean/std; {args.maps} maps, top-{args.k}")
    results = [run_network(name, images, args) for name in args.networks.split(",")]
    print()
    header = (
        f"{'network':9} {'layer':12} {'engine path':19} {'proj.':>6} {'scan s':>7} {'engine s':>9} "
        f"{'captum s':>9} {'ratio':>6} {'goal':>5}  equal (checked, worst |diff| / max)"
    )
    print(header)
    for r in results:
        extrapolated = (
            "" if r["sample"] >= r["count"] else f" (from {r['sample']} calls, {r['captum_per_s']:.3f} s each)"
        )
        verdict = "met" if r["ratio"] >= GOAL else "NOT met"
        print(
            f"{r['name']:9} {r['layer']:12} {r['path']:19} {r['count']:6d} {r['scan_s']:7.1f} {r['engine_s']:9.1f} "
            f"{r['captum_full_s']:9.1f} {r['ratio']:5.1f}x {GOAL:4.0f}x  {r['checked']} equal, {r['worst']:.1e}"
            f"  [{verdict}]{extrapolated}"
        )
    print(f"load:     {load_average()} (after)")


if __name__ == "__main__":
    main()

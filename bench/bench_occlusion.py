"""Occlusion-sensitivity benchmark: the engine (`OcclusionSensitivity`) against Captum's `Occlusion`.

Both run the same occluded forward passes of full-size ZFNet (224x224, 1000 classes, PyTorch's default
init, seeded, eval mode) on the same images with the same square (zeros = the grey mean pixel) and the
same positions: Captum's `sliding_window_shapes=(3, w, w)`, `strides=(3, s, s)`, `baselines=0`, with a
forward function returning the softmax probabilities and `target` = the correct classes, i.e. the
probability of the target class. Captum turns those into attributions (the probability drop spread over
each window); the engine keeps the maps themselves (probability of the target, most probable class, the
layer-5 map's total activation) and also projects the chosen map. So the timed work is the same number of
forward passes; Captum is tried with several `perturbations_per_eval` and its best is the reference.

Checks, printed: the engine's probability map against single forward passes (a seeded sample of
positions), and Captum's attribution against the mean probability drop of the windows covering each
pixel computed from the engine's map.

The default square is 32 px with stride 24 (9 x 9 = 81 positions per image) so that the whole run
stays within a few minutes on 2 CPU cores; `--stride 8` gives the denser 25 x 25 grid. The checks run on a Kaiming-
initialised copy of the model (default init gives near-uniform probabilities, so any check would pass).

Usage:  python bench/bench_occlusion.py [--images 2] [--window 32] [--stride 24] [--ppe 1,8,32,64,128]
                                        [--batch-sizes 64] [--repeats 1] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_deconvnet import Timer, machine_lines, make_images  # noqa: E402

from zf_lightning.analysis.occlusion import OcclusionSensitivity  # noqa: E402
from zf_lightning.models import zfnet  # noqa: E402


def best_of(repeats: int, device, fn):
    """(min seconds, other processes' busy CPUs during the fastest run, last result)."""
    best, busy, out = float("inf"), 0.0, None
    for _ in range(repeats):
        timer = Timer(device)
        with timer:
            out = fn()
        if timer.seconds < best:
            best, busy = timer.seconds, timer.other_cpu_seconds / max(timer.seconds, 1e-9)
    return best, busy, out


def check(model, images, targets, w, s, sample, device):
    """(max |engine - single forward| of the target probability, max |Captum - mean drop|, largest drop)."""
    import copy

    from captum.attr import Occlusion

    model = copy.deepcopy(model)
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(module.weight)
            torch.nn.init.normal_(module.bias, 0.0, 0.1)
    result = OcclusionSensitivity(model, window=w, stride=s, project=False)(images, targets)
    count = len(images)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        for _ in range(sample):
            b = int(torch.randint(count, (1,), generator=generator))
            i = int(torch.randint(len(result.rows), (1,), generator=generator))
            j = int(torch.randint(len(result.cols), (1,), generator=generator))
            x = images[b].clone()
            top, left = int(result.rows[i]), int(result.cols[j])
            x[:, top : top + w, left : left + w] = 0
            p = torch.softmax(model(x[None]), dim=1)[0, targets[b]]
            worst = max(worst, abs(float(p - result.true_class_prob[b, i, j])))
        attribution = Occlusion(lambda x: torch.softmax(model(x), dim=1)).attribute(
            images,
            sliding_window_shapes=(3, w, w),
            strides=(3, s, s),
            baselines=0,
            target=targets,
            perturbations_per_eval=16,
        )
    drop = result.probabilities[torch.arange(count), targets][:, None, None] - result.true_class_prob
    size = images.shape[-1]
    ys = torch.arange(size, device=device)
    cover_r = ((ys >= result.rows[:, None]) & (ys < result.rows[:, None] + w)).float()
    cover_c = ((ys >= result.cols[:, None]) & (ys < result.cols[:, None] + w)).float()
    expected = torch.einsum("bij,iy,jx->byx", drop, cover_r, cover_c) / torch.einsum("iy,jx->yx", cover_r, cover_c)
    return worst, float((attribution - expected[:, None]).abs().max()), float(drop.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=24)
    parser.add_argument("--ppe", default="1,8,32,64,128", help="Captum perturbations_per_eval values to try")
    parser.add_argument("--batch-sizes", default="64", help="engine batch sizes to try")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check-sample", type=int, default=6, help="positions checked against single forward passes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from captum.attr import Occlusion

    print("\n".join(machine_lines(device)))
    torch.manual_seed(0)
    model = zfnet(1000, init_std=None).to(device).eval()
    images = make_images(16, seed=0, device=device)[: args.images].to(device)  # mean of 16 images subtracted
    targets = torch.arange(args.images, device=device) * 101 % 1000
    w, s = args.window, args.stride
    per_image = OcclusionSensitivity(model, window=w, stride=s, project=False)._check(images, targets)[1]
    positions = len(per_image[0]) * len(per_image[1])
    print(
        f"setting:  {args.images} images 224x224, square {w} px, stride {s}: {len(per_image[0])}x{len(per_image[1])} = "
        f"{positions} positions per image, {positions * args.images} occluded forward passes; best of {args.repeats}"
    )

    rows = []  # (name, seconds, busy)
    for batch_size in [int(v) for v in args.batch_sizes.split(",")]:
        for channels_last in (False, True):
            engine = OcclusionSensitivity(
                model, window=w, stride=s, batch_size=batch_size, project=False, channels_last=channels_last
            )
            seconds, busy, _ = best_of(args.repeats, device, lambda engine=engine: engine(images, targets))
            name = f"engine batch_size={batch_size}{' channels_last' if channels_last else ''}"
            rows.append((name, seconds, busy))
            print(f"  {name:<44} {seconds:8.2f} s", flush=True)
    engine_proj = OcclusionSensitivity(model, window=w, stride=s, batch_size=int(args.batch_sizes.split(",")[-1]))
    seconds, busy, _ = best_of(1, device, lambda: engine_proj(images, targets))
    print(f"  (engine with the deconv projection (c) as well: {seconds:.2f} s)")

    forward = lambda x: torch.softmax(model(x), dim=1)  # noqa: E731
    occlusion = Occlusion(forward)
    captum_rows = []
    for ppe in [int(v) for v in args.ppe.split(",")]:

        def run(ppe: int = ppe):
            with torch.no_grad():
                return occlusion.attribute(
                    images,
                    sliding_window_shapes=(3, w, w),
                    strides=(3, s, s),
                    baselines=0,
                    target=targets,
                    perturbations_per_eval=ppe,
                )

        seconds, busy, _ = best_of(args.repeats, device, run)
        captum_rows.append((f"captum Occlusion perturbations_per_eval={ppe}", seconds, busy))
        print(f"  {captum_rows[-1][0]:<44} {seconds:8.2f} s", flush=True)

    # ---- checks, on a copy with Kaiming weights: PyTorch's default init gives ZFNet near-uniform
    # probabilities (drops of ~1e-7), which would make any comparison pass. One image, 64 px square, stride 32.
    worst, captum_gap, scale = check(model, images[:1], targets[:1], 64, 32, args.check_sample, device)

    best_engine = min(rows, key=lambda r: r[1])
    best_captum = min(captum_rows, key=lambda r: r[1])
    default_engine = next((r for r in rows if r[0] == "engine batch_size=64 channels_last"), best_engine)
    print()
    print("| run | seconds | ms / occluded forward | other processes' busy CPUs |")
    print("|---|---:|---:|---:|")
    for name, seconds, busy in rows + captum_rows:
        print(f"| {name} | {seconds:.2f} | {1000 * seconds / (positions * args.images):.1f} | {busy:.2f} |")
    print()
    print(f"best engine: {best_engine[0]} {best_engine[1]:.2f} s; best Captum: {best_captum[0]} {best_captum[1]:.2f} s")
    print(
        f"speed-up (best Captum time / best engine time): {best_captum[1] / best_engine[1]:.2f}x; "
        f"engine at its defaults (batch_size=64, channels_last): {best_captum[1] / default_engine[1]:.2f}x (goal: >= 1)"
    )
    print("checks on a Kaiming-initialised copy, 1 image, square 64 stride 32 (16 positions):")
    print(f"check: engine target probability vs {args.check_sample} single forward passes, max |diff| = {worst:.2e}")
    print(
        f"check: Captum attribution vs mean probability drop of the covering windows (from the engine's map), "
        f"max |diff| = {captum_gap:.2e} (largest drop {scale:.2e})"
    )


if __name__ == "__main__":
    main()

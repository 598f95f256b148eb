"""Deconvnet benchmark: the engine's top-9 projections against per-projection baselines, side by side.

Measures, in one run on this machine, with the outputs checked equal:

1. Top-9 projections of all 256 maps of full-size ZFNet layer 5 (2304 projections) with the engine
   (`project_top_activations`), against
   (a) one dense deconv pass per projection: a forward of that single image up to conv5's ReLU with
       autograd, then a backward over the whole image with the deconvnet rule (relu of the gradient) at
       every ReLU below and LocalResponseNorm passed through, seeded with the activation at that one
       (map, row, col); the receptive-field window is cut from the input gradient. This is what most
       public deconvnet code does.
   (b) Captum's `NeuronDeconvolution`, one neuron at a time (times the activation, as Captum seeds with 1).
   Goal: the engine at least 3x faster than both.
2. The whole Fig. 2 projection step: every map of layers 1-5 (1376 maps x 9 = 12,384 projections) with the
   engine against (a). Goal: at least 5x. The dataset scan (`find_top_activations`) is timed and printed
   apart; it is not part of the ratio.

The engine always runs on the full set. The baselines take ~0.1-0.7 s per projection on a small CPU, so
they run on a seeded random sample of each layer's projections (`--baseline-sample`, `--full` for all)
and their per-projection time is extrapolated to the full count (said so in the table).

Usage:  python bench/bench_deconvnet.py [--images 512] [--device cpu|cuda] [--layers 1,2,3,4,5]
                                        [--baseline-sample 32] [--full] [--threads N] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from _common import load_average
from torch import nn

from zf_lightning.data.synthetic import SyntheticShapes
from zf_lightning.deconv.engine import Deconvnet, cut_windows
from zf_lightning.deconv.topk import (
    TopActivations,
    find_top_activations,
    project_all_top_activations,
    project_top_activations,
)
from zf_lightning.models import zfnet
from zf_lightning.testing.references import autograd_projections

RTOL = 1e-4
ATOL_FRACTION = 1e-5  # atol = this x the largest |value| of the baseline window it is compared with
GOALS = {"layer5": 3.0, "all": 5.0}


# ------------------------------------------------------------------ machine
def machine_lines(device: torch.device) -> list[str]:
    cpu = platform.processor() or "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        names = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")]
        if names:
            cpu = names[0]
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import captum

        captum_version = captum.__version__
    except ImportError:
        captum_version = "not installed"
    lines = [
        f"date:     {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"platform: {platform.platform()}",
        f"cpu:      {cpu}; os.cpu_count()={os.cpu_count()}; torch.get_num_threads()={torch.get_num_threads()}",
        f"python:   {platform.python_version()}; torch {torch.__version__}; captum {captum_version}",
    ]
    if device.type == "cuda":
        lines.append(f"device:   cuda, {torch.cuda.get_device_name(device)}")
    else:
        lines.append("device:   cpu")
    lines.append(f"load:     {load_average()} (1/5/15-min load average before the run; other processes skew timings)")
    return lines


class Timer:
    """Wall-clock seconds of a block (accumulated over uses); on CUDA the device is synchronized before each reading.

    Also the process CPU time (all threads): a cross-check that other processes on the machine skew less.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.other_cpu_seconds = 0.0  # CPU time other processes used meanwhile (Linux; 0 elsewhere)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Timer:
        self._sync()
        self._start, self._cpu_start, self._busy_start = (
            time.perf_counter(),
            time.process_time(),
            machine_busy_seconds(),
        )
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._start
        own = time.process_time() - self._cpu_start
        self.cpu_seconds += own
        self.other_cpu_seconds += max(0.0, machine_busy_seconds() - self._busy_start - own)


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used so far (from /proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as file:
            fields = [int(v) for v in file.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal; guest time is already in user


# ------------------------------------------------------------------ data
def make_images(count: int, seed: int, device: torch.device) -> torch.Tensor:
    """`count` SyntheticShapes images at 224x224 (100 classes), scaled to 0-1, mean image subtracted."""
    dataset = SyntheticShapes(
        "train", num_classes=100, images_per_class=max(1, -(-count // 100)), image_size=224, seed=seed
    )
    images = torch.stack([dataset[i][0] for i in range(count)]).float().div_(255)
    images -= images.mean(dim=0, keepdim=True)  # the paper's preprocessing: subtract the mean image
    return images.to(device)


# ------------------------------------------------------------------ baselines
def dense_deconv(
    features: nn.Sequential, top_index: int, image: torch.Tensor, map_: int, row: int, col: int
) -> torch.Tensor:
    """Baseline (a): one forward of one image to features[top_index] and one backward over the whole image.

    Returns (C, H, W): the deconvnet projection of the activation (map_, row, col), seeded with its value.
    """

    def seed(output: torch.Tensor) -> list[torch.Tensor]:
        one = torch.zeros_like(output)
        one[map_, row, col] = output[map_, row, col]
        return [one]

    return autograd_projections(features, image, top_index, seed)[0]


def captum_prefix(features: nn.Sequential, top_index: int, lrn_identity: bool = False) -> nn.Sequential:
    """features[0..top_index] as a deep-copied nn.Sequential, ReLUs not in place (and LRN -> Identity if asked)."""
    modules = []
    for module in copy.deepcopy(list(features)[: top_index + 1]):
        if isinstance(module, nn.ReLU):
            module = nn.ReLU(inplace=False)
        elif lrn_identity and isinstance(module, nn.LocalResponseNorm):
            module = nn.Identity()
        modules.append(module)
    return nn.Sequential(*modules).eval()


def without_lrn(features: nn.Sequential) -> nn.Sequential:
    """The same features with every LocalResponseNorm dropped (= nn.Identity; the engine rejects nn.Identity)."""
    return nn.Sequential(*[copy.deepcopy(m) for m in features if not isinstance(m, nn.LocalResponseNorm)]).eval()


# ------------------------------------------------------------------ checks
@dataclass
class Check:
    name: str
    informative: bool = False  # True: a known difference, reported but not a failure
    count: int = 0
    all_zero: int = 0  # comparisons where the baseline window is all zero (a dead map there)
    max_rel: float = 0.0
    max_outside: float | None = (
        None  # largest |gradient| outside the receptive-field window, relative to the window's max
    )
    failures: list[str] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)  # least-squares s in expected ~ s * actual
    residual: float = 0.0  # max |expected - s * actual| / max |expected|

    def compare(self, actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        self.count += 1
        scale = expected.abs().max().item()
        self.all_zero += scale == 0
        diff = (actual - expected).abs().max().item()
        self.max_rel = max(self.max_rel, diff / scale if scale > 0 else diff)
        norm = actual.pow(2).sum().item()
        if norm > 0 and scale > 0:
            fit = (actual * expected).sum().item() / norm
            self.scales.append(fit)
            self.residual = max(self.residual, (expected - fit * actual).abs().max().item() / scale)
        try:
            torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL_FRACTION * scale if scale > 0 else 1e-12)
        except AssertionError as error:
            self.failures.append(f"{what}: {str(error).splitlines()[0]} (max abs diff {diff:.3g}, scale {scale:.3g})")

    def line(self) -> str:
        if self.informative:
            verdict = f"differ on {len(self.failures)} (expected, not a failure)" if self.failures else "equal"
            if self.scales:
                verdict += (
                    f"; least-squares fit: baseline = s x engine with s in [{min(self.scales):.3f}, "
                    f"{max(self.scales):.3f}], "
                    f"max residual / max |ref| = {self.residual:.2e}"
                )
        else:
            verdict = "OK" if not self.failures else f"FAILED on {len(self.failures)}"
        outside = (
            ""
            if self.max_outside is None
            else f"; max |gradient outside the window| / max inside = {self.max_outside:.1e}"
        )
        zero = f" ({self.all_zero} all zero)" if self.all_zero else ""
        return (
            f"{self.name}: {self.count} windows compared{zero}, max |diff| / max |ref| = {self.max_rel:.2e} "
            f"-> {verdict}{outside}"
        )


def window_of(full: torch.Tensor, top: int, left: int, size: tuple[int, int]) -> torch.Tensor:
    return cut_windows(full.unsqueeze(0), [0], [top], [left], size)[0]


def outside_fraction(full: torch.Tensor, top: int, left: int, size: tuple[int, int]) -> float:
    """Largest |gradient| outside the receptive-field window (there should be none), relative to the largest inside."""
    inside = full[:, max(top, 0) : top + size[0], max(left, 0) : left + size[1]]
    scale = inside.abs().max().item()
    rest = full.clone()
    rest[:, max(top, 0) : top + size[0], max(left, 0) : left + size[1]] = 0
    return 0.0 if scale == 0 else rest.abs().max().item() / scale


# ------------------------------------------------------------------ main
def subset(top: TopActivations, count: int) -> TopActivations:
    return TopActivations(
        top.layer, top.maps[:count], top.values[:count], top.image_index[:count], top.rows[:count], top.cols[:count]
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--images", type=int, default=512, help="synthetic 224x224 images scanned for the top-9s (default 512)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--layers", default="1,2,3,4,5", help="conv layers of benchmark 2 (benchmark 1 needs 5)")
    parser.add_argument(
        "--baseline-sample", type=int, default=32, help="projections per layer the baselines run on (default 32)"
    )
    parser.add_argument("--full", action="store_true", help="run the baselines on every projection (hours on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch of the scan (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-captum", action="store_true", help="skip baseline (b)")
    parser.add_argument(
        "--profile", action="store_true", help="also print torch.profiler's top ops of the engine on layer 5"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    layers = sorted({int(x) for x in args.layers.split(",") if x.strip()})
    warnings.filterwarnings("ignore", message="Setting backward hooks")  # captum, on every call
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    started = time.perf_counter()

    print("Deconvnet benchmark (bench/bench_deconvnet.py)")
    for line in machine_lines(device):
        print("  " + line)
    print(f"  args:     {' '.join(sys.argv[1:]) or '(defaults)'}")

    torch.manual_seed(args.seed)
    net = zfnet(1000, input_size=224, init_std=None).to(device).eval()  # PyTorch default init: live activations
    for p in net.parameters():
        p.requires_grad_(False)  # nobody needs weight gradients; the baselines differentiate w.r.t. the input only
    features = net.features
    deconv = Deconvnet(net)

    with Timer(device) as t_data:
        images = make_images(args.images, args.seed, device)
    print(f"\nmodel: full-size ZFNet (zfnet(1000, input_size=224, init_std=None), seed {args.seed}), eval mode")
    print(
        f"data:  {args.images} SyntheticShapes images 224x224, mean image subtracted ({t_data.seconds:.1f} s to "
        f"generate)"
    )

    # ---------------------------------------------------------------- scan
    maps_by_layer = {layer: list(range(deconv.num_maps(layer))) for layer in layers}
    deconv.feature_maps(images[:2], layers)  # warm-up
    with Timer(device) as t_scan:
        batches = (
            (images[s : s + args.batch_size], torch.arange(s, min(s + args.batch_size, args.images)))
            for s in range(0, args.images, args.batch_size)
        )
        found = find_top_activations(deconv, batches, maps_by_layer, k=9)
    total_projections = sum(top.values.numel() for top in found.values())
    print(
        f"scan:  find_top_activations over {args.images} images, layers {layers}: {t_scan.seconds:.1f} s (not part of "
        f"any ratio)"
    )

    def load_images(indices: list[int]) -> torch.Tensor:
        return images[torch.as_tensor(indices, dtype=torch.long, device=device)]

    # ---------------------------------------------------------------- engine: full set
    engine_s: dict[int, Timer] = {}
    engine_out = {}
    for layer in layers:
        project_top_activations(deconv, subset(found[layer], 2), load_images)  # warm-up (2 maps)
        with Timer(device) as t:
            engine_out[layer] = project_top_activations(deconv, found[layer], load_images)
        engine_s[layer] = t
    # The Fig. 2 step as zf-visualize top9 runs it: all layers in one call, one forward per image.
    with Timer(device) as t_all_layers:
        all_out = project_all_top_activations(deconv, {layer: found[layer] for layer in layers}, load_images)
    for layer in layers:
        torch.testing.assert_close(all_out[layer].projections, engine_out[layer].projections, rtol=1e-5, atol=1e-6)
    print(f"engine, all layers in one call: {t_all_layers.seconds:.1f} s (same windows as layer by layer)")

    print("\nprojections per layer (engine: all of them):")
    touched = set()
    for layer in layers:
        top = found[layer]
        distinct = torch.unique(top.image_index).numel()
        touched |= set(top.image_index.flatten().tolist())
        zero = int((top.values <= 0).sum())
        field_ = deconv.receptive_field(layer).size
        print(
            f"  layer {layer}: {top.values.shape[0]:3d} maps x 9 = {top.values.numel():5d} projections on "
            f"{field_[0]}x{field_[1]} "
            f"windows, from {distinct} distinct images ({top.values.numel() / distinct:.1f} per image); "
            f"{zero} with activation 0; engine {engine_s[layer].seconds:.2f} s"
        )
    print(f"  all:     {total_projections} projections touch {len(touched)} distinct images of {args.images}")

    # ---------------------------------------------------------------- baselines on a sample
    generator = torch.Generator().manual_seed(args.seed + 1)
    samples: dict[int, torch.Tensor] = {}
    for layer in layers:
        values = found[layer].values.reshape(-1).cpu()
        live = (values > 0).nonzero().flatten()  # a zero activation projects to zero: nothing to compare
        pool = torch.arange(values.numel()) if args.full or not len(live) else live
        count = len(pool) if args.full else min(args.baseline_sample, len(pool))
        samples[layer] = pool[torch.randperm(len(pool), generator=generator)[:count]].sort().values
    if not args.full:
        print(
            f"\nbaselines: {args.baseline_sample} projections per layer drawn at random (seed {args.seed + 1}) among "
            f"those with "
            "activation > 0 (their cost does not depend on the value); per-projection time x full count = extrapolated"
        )

    dense_s: dict[int, Timer] = {}
    dense_check = Check("engine vs (a) dense autograd deconvnet")
    for layer in layers:
        top, out = found[layer], engine_out[layer]
        top_index = deconv._top_index(layer)
        field_ = deconv.receptive_field(layer)
        flat_image, flat_rows, flat_cols = (t.reshape(-1).tolist() for t in (top.image_index, top.rows, top.cols))
        flat_maps = top.maps.repeat_interleave(top.values.shape[1]).tolist()
        k = top.values.shape[1]
        n0 = samples[layer][0].item()
        dense_deconv(
            features, top_index, images[flat_image[n0]], flat_maps[n0], flat_rows[n0], flat_cols[n0]
        )  # warm-up
        timer = Timer(device)
        for n in samples[layer].tolist():
            with timer:
                full = dense_deconv(
                    features, top_index, images[flat_image[n]], flat_maps[n], flat_rows[n], flat_cols[n]
                )
                top_left = out.window_top.reshape(-1)[n].item(), out.window_left.reshape(-1)[n].item()
                window = window_of(full, *top_left, field_.size)
            dense_check.compare(
                out.projections[n // k, n % k], window, f"layer {layer} map {flat_maps[n]} top-{n % k + 1}"
            )
            dense_check.max_outside = max(
                dense_check.max_outside or 0.0, outside_fraction(full, *top_left, field_.size)
            )
        dense_s[layer] = timer

    captum_timer = None
    captum_checks: list[Check] = []
    if 5 in layers and not args.no_captum:
        try:
            from captum.attr import NeuronDeconvolution
        except ImportError:
            NeuronDeconvolution = None
            print("\ncaptum is not installed: baseline (b) skipped (pip install -e '.[bench]')")
        if NeuronDeconvolution is not None:
            captum_timer, captum_checks = run_captum(
                NeuronDeconvolution, features, deconv, found[5], engine_out[5], samples[5], images, device
            )

    # ---------------------------------------------------------------- table
    rows = []

    def baseline_row(what, layer_list, timers):
        """Per-projection time of the sample, times the full count of each layer."""
        count = sum(found[layer].values.numel() for layer in layer_list)
        measured = sum(len(samples[layer]) for layer in layer_list)
        wall = sum(timers[layer].seconds / len(samples[layer]) * found[layer].values.numel() for layer in layer_list)
        cpu = sum(timers[layer].cpu_seconds / len(samples[layer]) * found[layer].values.numel() for layer in layer_list)
        note = f"measured on {measured} of {count}, extrapolated" if measured < count else "measured on all"
        return Row(what, count, wall, cpu, note)

    def engine_row(what, layer_list):
        count = sum(found[layer].values.numel() for layer in layer_list)
        wall = sum(engine_s[layer].seconds for layer in layer_list)
        cpu = sum(engine_s[layer].cpu_seconds for layer in layer_list)
        return Row(what, count, wall, cpu, "measured on all")

    verdicts = []
    if 5 in layers:
        rows.append("Benchmark 1: top-9 projections of all 256 maps of ZFNet layer 5")
        engine = engine_row("engine project_top_activations", [5])
        rows.append(engine.against(engine))
        baselines = [baseline_row("(a) dense autograd deconv, 1 fwd+bwd per projection", [5], dense_s)]
        if captum_timer is not None:
            baselines.append(baseline_row("(b) captum NeuronDeconvolution, 1 neuron per call", [5], {5: captum_timer}))
        rows += [b.against(engine) for b in baselines]
        ratios = [b.wall / engine.wall for b in baselines]
        verdicts.append(
            "benchmark 1 (layer 5): engine "
            + " and ".join(f"{r:.1f}x faster than {b.what[:3]}" for r, b in zip(ratios, baselines))
            + f"; goal >= {GOALS['layer5']:.0f}x vs both -> {'MET' if min(ratios) >= GOALS['layer5'] else 'MISSED'}"
        )
    rows.append(f"Benchmark 2: the Fig. 2 projection step, every map of layers {','.join(map(str, layers))}")
    for layer in layers:
        engine = engine_row(f"engine, layer {layer}", [layer])
        rows.append(engine.against(engine))
        rows.append(baseline_row(f"(a) dense, layer {layer}", [layer], dense_s).against(engine))
    per_layer = engine_row(f"engine, layers {','.join(map(str, layers))}, layer by layer", layers)
    engine = Row(
        f"engine, layers {','.join(map(str, layers))}, one call",
        per_layer.count,
        t_all_layers.seconds,
        t_all_layers.cpu_seconds,
        "measured on all; one forward per image",
    )
    dense = baseline_row(f"(a) dense, layers {','.join(map(str, layers))}", layers, dense_s)
    rows += [per_layer.against(engine), engine.against(engine), dense.against(engine)]
    rows.append(
        Row(
            "scan find_top_activations (apart)",
            args.images,
            t_scan.seconds,
            t_scan.cpu_seconds,
            "count = images; not in any ratio",
        )
    )
    ratio = dense.wall / engine.wall
    goal_note = "" if layers == [1, 2, 3, 4, 5] else " (the goal is stated for layers 1-5)"
    verdicts.append(
        f"benchmark 2 (layers {','.join(map(str, layers))}): engine {ratio:.1f}x faster than (a); "
        f"goal >= {GOALS['all']:.0f}x{goal_note} -> {'MET' if ratio >= GOALS['all'] else 'MISSED'}"
    )

    print()
    print_table(rows)
    print()
    print(
        "outputs (engine windows vs baseline windows, torch.testing.assert_close, "
        f"rtol={RTOL:g}, atol={ATOL_FRACTION:g} x max |baseline window|):"
    )
    checks = [dense_check] + captum_checks
    for check in checks:
        print("  " + check.line())
        for failure in [] if check.informative else check.failures[:5]:
            print("    " + failure)
    timed = {
        "engine": list(engine_s.values()),
        "baselines": list(dense_s.values()) + ([captum_timer] if captum_timer else []),
    }
    busy = {
        name: sum(t.other_cpu_seconds for t in ts) / max(1e-9, sum(t.seconds for t in ts)) for name, ts in timed.items()
    }
    print(
        f"other processes kept {busy['engine']:.2f} CPUs busy on average while the engine was timed, "
        f"{busy['baselines']:.2f} "
        f"while the baselines were (of {os.cpu_count()}; above ~0.1 the timings are skewed: rerun on a quiet machine)"
    )
    for verdict in verdicts:
        print(verdict)
    ok = all(not check.failures for check in checks if not check.informative)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s; load average at the end {load_average()}")

    if args.profile and 5 in layers:
        profile_engine(deconv, found[5], load_images)
    return 0 if ok else 1


def run_captum(NeuronDeconvolution, features, deconv, top, out, sample, images, device):
    """Baseline (b), timed on the real model; then the equality check on LRN-free copies (untimed)."""
    top_index = deconv._top_index(5)
    field_ = deconv.receptive_field(5)
    k = top.values.shape[1]
    flat_image, flat_rows, flat_cols = (t.reshape(-1).tolist() for t in (top.image_index, top.rows, top.cols))
    flat_maps = top.maps.repeat_interleave(k).tolist()
    flat_values = top.values.reshape(-1).tolist()

    model = captum_prefix(features, top_index)
    attribution = NeuronDeconvolution(model, model[top_index])

    def captum_window(attr, model_images, n, value, top_left):
        full = attr.attribute(
            model_images[flat_image[n]].unsqueeze(0), neuron_selector=(flat_maps[n], flat_rows[n], flat_cols[n])
        )[0]
        return window_of(full * value, *top_left, field_.size)

    def top_left(n):
        return out.window_top.reshape(-1)[n].item(), out.window_left.reshape(-1)[n].item()

    n0 = sample[0].item()
    captum_window(attribution, images, n0, flat_values[n0], top_left(n0))  # warm-up
    timer = Timer(device)
    as_is = Check(
        "info: engine vs (b) captum on the real model (LRN: true gradient in captum, identity in the engine)",
        informative=True,
    )
    for n in sample.tolist():
        with timer:
            window = captum_window(attribution, images, n, flat_values[n], top_left(n))
        as_is.compare(out.projections[n // k, n % k], window, f"layer 5 map {flat_maps[n]} top-{n % k + 1}")

    # Equality check: LocalResponseNorm -> identity in both (forward and backward), so both compute the same thing.
    plain = without_lrn(features)
    plain_deconv = Deconvnet(plain)
    plain_model = captum_prefix(features, top_index, lrn_identity=True)
    plain_attr = NeuronDeconvolution(plain_model, plain_model[top_index])
    image_index = torch.tensor([flat_image[n] for n in sample.tolist()], device=device)
    maps = torch.tensor([flat_maps[n] for n in sample.tolist()], device=device)
    used, local = torch.unique(image_index, return_inverse=True)
    activation = plain_deconv.feature_maps(images[used], [5])[
        5
    ]  # the LRN-free net's own strongest location of each map
    width = activation.shape[3]
    where = activation[local, maps].flatten(1).argmax(dim=1)
    projected = plain_deconv.project_activations(images[used], 5, local, maps, where // width, where % width)
    check = Check(
        "engine vs (b) captum, LRN -> nn.Identity in both models (the equality check; same sampled images and maps, "
        "at the LRN-free net's own strongest location)"
    )
    for position, n in enumerate(sample.tolist()):
        location = (flat_maps[n], int(where[position] // width), int(where[position] % width))
        full = plain_attr.attribute(images[flat_image[n]].unsqueeze(0), neuron_selector=location)[0]
        window = window_of(
            full * projected.values[position].item(),
            projected.top[position].item(),
            projected.left[position].item(),
            field_.size,
        )
        check.compare(projected.windows[position], window, f"layer 5 map {flat_maps[n]} at {location[1:]}")
        check.max_outside = max(
            check.max_outside or 0.0,
            outside_fraction(full, projected.top[position].item(), projected.left[position].item(), field_.size),
        )
    return timer, [check, as_is]


@dataclass
class Row:
    what: str
    count: int
    wall: float
    cpu: float
    note: str
    ratio: float | None = None  # wall-clock seconds / the engine's
    cpu_ratio: float | None = None

    def against(self, engine: Row) -> Row:
        return Row(
            self.what, self.count, self.wall, self.cpu, self.note, self.wall / engine.wall, self.cpu / engine.cpu
        )

    def cells(self) -> list[str]:
        per = f"{1000 * self.wall / self.count:.2f}" if self.ratio is not None else "-"
        ratio = f"{self.ratio:.1f}x" if self.ratio is not None else "-"
        cpu_ratio = f"{self.cpu_ratio:.1f}x" if self.cpu_ratio is not None else "-"
        return [self.what, str(self.count), f"{self.wall:.1f}", per, ratio, f"{self.cpu:.1f}", cpu_ratio, self.note]


HEADER = ["what", "count", "seconds", "ms / projection", "ratio vs engine", "cpu s", "cpu ratio", "note"]


def print_table(rows) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(" | ".join(HEADER))
        for row in rows:
            print(f"-- {row}" if isinstance(row, str) else " | ".join(row.cells()))
        return
    table = Table(*HEADER)
    for row in rows:
        if isinstance(row, str):
            if table.row_count:
                table.add_section()
            table.add_row(f"[bold]{row}[/bold]", *[""] * (len(HEADER) - 1))
        else:
            table.add_row(*row.cells())
    Console(width=220).print(table)


def profile_engine(deconv, top, load_images) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    part = subset(top, 32)
    with profile(activities=activities) as prof:
        project_top_activations(deconv, part, load_images)
    print(f"\ntorch.profiler, engine on layer 5, {part.values.numel()} projections:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    sys.exit(main())

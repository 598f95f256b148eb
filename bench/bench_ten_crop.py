"""10-crop evaluation: the module's test path (ImageClassifier.test_step on (B, 10, C, H, W) batches, as
`trainer.test` runs it) against the bare network on the same B*10 crops in one call (no softmax averaging).

    .venv/bin/python bench/bench_ten_crop.py [--batches 3] [--repeats 5] [--batch-size 128] [--width 0.25]

Arms, all on the same in-memory test batches (drawn once from the synthetic datamodule's 10-crop test loader:
mean image subtracted, TenCrop, stacked), the same weights, eval mode and torch.inference_mode:
* bare: `net(images.flatten(0, 1))`, one call of B*10 crops, logits only.
* test_step: `trainer.test` with a Trainer of the run's accelerator/devices/precision and no loggers, progress bar
  or checkpoints; each batch goes through ImageClassifier.test_step -> _evaluate: predict_proba (one network call
  on B*10 crops, softmax, mean over each image's crops), NLL loss, the 3 test metrics' update and self.log.
  Timed from one on_test_batch_start to the next (the last batch up to on_test_epoch_end), so Trainer startup and
  the epoch-end metric compute are left out.
* predict_proba: direct calls of ImageClassifier.predict_proba (the averaging alone, no loss/metrics/logging).
* naive: ten separate network calls of B crops (crop i of every image), softmax, averaged; for context.
The arms take turns in a rotating order, repeat after repeat; each arm's first --warmup batches are left out.
Throughput is counted in crops per second (B*10 per batch); the ratios are the same in images per second.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import Batches, fmt, full_batches, load_average

from zf_lightning.config import config_dir  # noqa: E402

GOAL = 0.9
ARMS = ("bare", "test_step", "predict_proba", "naive")


class BatchClock(L.Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.stamps.append(time.perf_counter())

    def on_test_epoch_end(self, trainer, pl_module) -> None:  # callbacks run before the module's metric compute
        self.stamps.append(time.perf_counter())


def materialise(cfg, count: int) -> list:
    """`count` full 10-crop test batches from the datamodule's own test loader (going round again if needed)."""
    datamodule = instantiate(cfg.data)
    datamodule.num_workers = 0
    datamodule.prepare_data()
    datamodule.setup("test")
    return full_batches(datamodule.test_dataloader, datamodule.batch_size, count, "test")


def timed_loop(batches: list, step) -> list[float]:
    stamps = []
    with torch.inference_mode():
        for images, labels in batches:
            stamps.append(time.perf_counter())
            step(images, labels)
        stamps.append(time.perf_counter())
    return stamps


def run_arm(arm: str, model, cfg, batches: list) -> list[float]:
    net = model.net
    model.eval()
    if arm == "bare":
        return timed_loop(batches, lambda images, labels: net(images.flatten(0, 1)))
    if arm == "predict_proba":
        return timed_loop(batches, lambda images, labels: model.predict_proba(images))
    if arm == "naive":

        def naive(images, labels):
            return torch.stack([net(images[:, crop]).softmax(dim=-1) for crop in range(images.shape[1])]).mean(dim=0)

        return timed_loop(batches, naive)
    clock = BatchClock()
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.test(model, dataloaders=Batches(batches), verbose=False)
    assert len(clock.stamps) == len(batches) + 1, (len(clock.stamps), len(batches))
    return clock.stamps


def check_outputs(model, batches: list) -> dict[str, float]:
    """Largest differences: predict_proba vs the averaged softmax of the bare call, and the naive arm vs it."""
    images = batches[0][0]
    model.eval()
    with torch.inference_mode():
        bare = model.net(images.flatten(0, 1)).softmax(dim=-1).unflatten(0, images.shape[:2]).mean(dim=1)
        averaged = model.predict_proba(images)
        naive = torch.stack([model.net(images[:, crop]).softmax(dim=-1) for crop in range(images.shape[1])]).mean(dim=0)
    return {"predict_proba": float((averaged - bare).abs().max()), "naive": float((naive - bare).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="timed batches per arm and repeat")
    parser.add_argument("--warmup", type=int, default=1, help="batches at the start of each arm run left out")
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm (rotating order)")
    parser.add_argument(
        "--batch-size", type=int, default=128, help="images per batch, 10 crops each (default: the default run's 128)"
    )
    parser.add_argument(
        "--width", type=float, default=0.25, help="ZFNet width multiplier (default: the default run's 0.25)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of conf/train.yaml")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    overrides = [
        f"data.batch_size={args.batch_size}",
        f"model.net.width_multiplier={args.width}",
        "paths.output_dir=unused",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    if not cfg.data.get("ten_crop_test", False):
        raise SystemExit("data.ten_crop_test is off in this config: nothing to compare")
    batches = materialise(cfg, args.warmup + args.batches)
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model)
    crops = batches[0][0].shape[1]
    per_batch = args.batch_size * crops

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
        f"python {platform.python_version()} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"lightning {L.__version__}"
    )
    print(f"load average before: {load_average()}")
    print(
        f"run: experiment quickstart, {cfg.model.net.arch} x{cfg.model.net.width_multiplier}, {cfg.data.crop_size} px "
        f"crops, "
        f"batch {args.batch_size} images x {crops} crops = {per_batch} crops, {args.batches} timed batches after "
        f"{args.warmup} warm-up per arm run, {args.repeats} runs per arm; eval mode, inference_mode"
    )
    differences = check_outputs(model, batches)
    print(
        f"outputs: predict_proba vs softmax-average of the bare call: max |diff| {differences['predict_proba']:.1e}; "
        f"naive vs the same: {differences['naive']:.1e}"
    )

    throughput: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for arm in ARMS:  # warm-up of the process for every arm: allocator, kernels, Lightning imports
        run_arm(arm, model, cfg, batches[: args.warmup + 1])
    for repeat in range(args.repeats):
        order = ARMS[repeat % len(ARMS) :] + ARMS[: repeat % len(ARMS)]
        line = []
        for arm in order:
            stamps = run_arm(arm, model, cfg, batches)
            seconds = stamps[-1] - stamps[args.warmup]
            throughput[arm].append(per_batch * args.batches / seconds)
            line.append(f"{arm} {throughput[arm][-1]:.0f}")
        print(f"  repeat {repeat} (crops/s): {', '.join(line)}", flush=True)

    print(f"load average after: {load_average()} (other processes on the machine skew every arm)")
    medians = {arm: statistics.median(values) for arm, values in throughput.items()}
    for arm in ARMS:
        print(
            f"{arm:>13}: median {medians[arm]:7.1f} crops/s = {medians[arm] / crops:6.1f} images/s "
            f"(all: {fmt(throughput[arm])} crops/s)"
        )
    bare = throughput["bare"]
    for arm, what in (
        ("test_step", "the module's 10-crop test path (trainer.test)"),
        ("predict_proba", "predict_proba alone"),
        ("naive", "naive, ten calls of B crops"),
    ):
        paired = [value / reference for value, reference in zip(throughput[arm], bare)]
        ratio = medians[arm] / medians["bare"]
        goal = f"; goal >= {GOAL} ({'met' if ratio >= GOAL else 'NOT met'})" if arm == "test_step" else " (context)"
        print(f"{what} / bare: {ratio:.3f} (medians); paired per repeat: {fmt(paired, '.3f')}{goal}")


if __name__ == "__main__":
    main()

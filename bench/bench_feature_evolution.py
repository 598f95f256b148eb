"""Cost of the feature-evolution callback: one epoch of the default run (`zf-train`: quickstart ZFNet on the
synthetic data) with and without it, on a snapshot epoch so that projecting and writing are included.

    .venv/bin/python bench/bench_feature_evolution.py [--repeats 3] [--threads N]

Each measurement is a fresh model (same seed) and a one-epoch Trainer; "on" and "off" alternate so that
drifting machine load hits both alike. An epoch is timed from the first callback's on_train_epoch_start to
the last callback's on_train_epoch_end (training batches, validation, epoch-end hooks; no loggers or
checkpoints in either arm). The callback's own epoch-end work (gather, projection, npz + PNG) is timed
separately, so the per-batch tracking cost is what remains of the difference.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import load_average

from zf_lightning.callbacks.evolution import FeatureEvolution  # noqa: E402
from zf_lightning.config import config_dir  # noqa: E402


class EpochStart(L.Callback):
    def __init__(self) -> None:
        self.started = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()


class EpochEnd(L.Callback):
    def __init__(self, start: EpochStart) -> None:
        self.start, self.seconds = start, 0.0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start.started


class TimedFeatureEvolution(FeatureEvolution):
    """FeatureEvolution with stopwatches on its per-batch hooks and its epoch-end snapshot.

    The A/B epoch times carry the machine's noise; these measure the callback's own work directly.
    """

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self.tracking_seconds = 0.0
        self.snapshot_seconds = 0.0

    def _timed(self, function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.tracking_seconds += time.perf_counter() - started

        return wrapper

    def _tracker(self, layer):
        return self._timed(super()._tracker(layer))

    def _remember_input(self, module, inputs):
        started = time.perf_counter()
        super()._remember_input(module, inputs)
        self.tracking_seconds += time.perf_counter() - started

    def on_train_epoch_end(self, trainer, pl_module):
        started = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.snapshot_seconds += time.perf_counter() - started


def one_epoch(cfg, datamodule, with_callback: bool, out: Path, own: dict[str, list[float]]) -> float:
    L.seed_everything(cfg.seed, verbose=False)
    model = instantiate(cfg.model)
    start = EpochStart()
    end = EpochEnd(start)
    callbacks: list[L.Callback] = [start]
    if with_callback:
        options = {k: v for k, v in OmegaConf.to_container(cfg.callbacks.feature_evolution).items() if k != "_target_"}
        options.update(output_dir=str(out / "feature_evolution"), snapshot_epochs=[1])
        evolution = TimedFeatureEvolution(**options)
        callbacks.append(evolution)
    callbacks.append(end)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out),
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=datamodule)
    if with_callback:
        assert (out / "feature_evolution" / "epoch_001.npz").is_file()
        own["tracking"].append(evolution.tracking_seconds)
        own["snapshot"].append(evolution.snapshot_seconds)
    return end.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="epochs per arm (interleaved)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. data.train_per_class=100"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # the mean image, computed once (cached) before any timing

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
        f"python {platform.python_version()} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"lightning {L.__version__}"
    )
    print(f"load average before: {load_average()}")
    n_train = cfg.data.num_classes * cfg.data.train_per_class
    print(
        f"run: experiment quickstart, {cfg.model.net.arch} x{cfg.model.net.width_multiplier}, {cfg.data.crop_size} px "
        f"crops, "
        f"{n_train} train images, batch {cfg.data.batch_size}, workers {cfg.data.num_workers}, "
        f"{cfg.callbacks.feature_evolution.maps_per_layer} maps x 5 layers, snapshot at epoch 1"
    )

    times: dict[str, list[float]] = {"off": [], "on": []}
    own: dict[str, list[float]] = {"tracking": [], "snapshot": []}
    with tempfile.TemporaryDirectory() as tmp:
        one_epoch(
            cfg, datamodule, True, Path(tmp) / "warmup", {"tracking": [], "snapshot": []}
        )  # warm-up: imports, allocator, caches
        for repeat in range(args.repeats):
            for arm in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                seconds = one_epoch(cfg, datamodule, arm == "on", Path(tmp) / f"{arm}{repeat}", own)
                times[arm].append(seconds)
                print(f"  repeat {repeat} {arm:>3}: {seconds:7.2f} s")

    print(f"load average after: {load_average()} (other processes on the machine skew both arms)")
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    tracking, snapshot = statistics.median(own["tracking"]), statistics.median(own["snapshot"])
    print(f"epoch without callback: median {off:.2f} s  (all: {', '.join(f'{t:.2f}' for t in times['off'])})")
    print(f"epoch with callback:    median {on:.2f} s  (all: {', '.join(f'{t:.2f}' for t in times['on'])})")
    print(
        f"A/B overhead: {100 * (on / off - 1):+.2f}% (median on / median off - 1); "
        f"best-of: {100 * (min(times['on']) / min(times['off']) - 1):+.2f}%"
    )
    print(
        f"callback's own time per epoch (stopwatches, medians): tracking hooks {tracking:.3f} s "
        f"(all: {', '.join(f'{t:.3f}' for t in own['tracking'])}), snapshot {snapshot:.3f} s "
        f"(all: {', '.join(f'{t:.3f}' for t in own['snapshot'])})"
    )
    print(
        f"callback's own time / epoch without it: {100 * (tracking + snapshot) / off:.2f}% "
        f"(tracking {100 * tracking / off:.2f}% + snapshot {100 * snapshot / off:.2f}%); goal <= 3%"
    )


if __name__ == "__main__":
    main()

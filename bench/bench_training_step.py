"""Training throughput of `zf-train` (the LightningModule with the default run's callbacks, loggers, metrics and
progress bar) against a hand-written PyTorch loop: same network, SGD recipe, data tensors and batch size.

    .venv/bin/python bench/bench_training_step.py [--steps 40] [--repeats 5] [--batch-size 128] [--width 0.25]

What is compared, and why it is fair:
* Lightning arm: the real config (conf/train.yaml, default experiment quickstart) composed with Hydra's compose
  API; model, callbacks (checkpoints, LR monitor, Rich progress bar, feature evolution), loggers (CSV + offline
  W&B) and Trainer are built exactly as `zf_lightning.cli.train.train` builds them, and `trainer.fit` runs.
  Deviations from the default run: one epoch (trainer.max_epochs=1), output into a temporary directory, and the
  datamodule's loaders replaced by lists of pre-built batches (below).
* Hand arm: `build_network` with the same options and seed, SGD with the module's two parameter groups (weight
  decay on weights, none on biases), the same lr and momentum, filter renormalisation after every step;
  zero_grad / forward / cross-entropy / backward / step, nothing else, except that dropout is reseeded before
  every step from the same (seed, step) as the default run's StepSeeding callback does, through
  torch.default_generator (the generator CPU dropout draws from), so that both arms draw the same masks.
* Data: batches drawn once from the synthetic datamodule's own training loader (random crops and flips, mean
  image subtracted) and kept in memory; both arms iterate the same list (the Lightning arm through a datamodule
  whose loaders are those lists), so input-pipeline cost is in neither arm. Validation gets 2 pre-built batches.
* Timing: the wall time from the start of one training batch to the start of the next (Lightning: a callback
  placed first, on_train_batch_start; hand: the top of the loop body). That covers everything a step costs in
  each arm: forward, backward, step, renormalisation, and in the Lightning arm the callbacks' batch hooks, metric
  updates, self.log, logging to CSV/W&B every log_every_n_steps and the progress-bar refresh. Startup, the
  sanity check, validation, checkpointing and epoch-end work are outside the window; the first --warmup steps
  of each run are left out too. Both arms train on identical data from identical weights and dropout draws, so
  their final weights are compared as a check that they do the same work.
* The epoch is a feature-evolution snapshot epoch (epoch 1), so its per-batch tracking hooks are on, as in 4 of
  the default run's 10 epochs.
Repeats alternate hand, lightning, lightning, hand, ... so that drifting load hits both alike.

Diagnostics, printed after the ratio: stopwatches on everything the Lightning arm does per step that the hand
loop does not (each callback's batch hooks, the forward hooks callbacks put on the network, the torchmetrics
update, self.log, the logger connector and each logger's log_metrics, Python's garbage collections), the CPU
time of background Python threads (Rich's refresh thread, W&B's) and of the W&B service process, and the CPU use
and page faults of each arm. --module-only-arm adds a third arm: the same module in a Trainer with none of the
callbacks, loggers or progress bar, to separate Lightning's loop from the default run's extras. Hydra overrides
try a fix without editing anything, e.g. `+callbacks.progress_bar.refresh_rate=1`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import Batches, fmt, full_batches, load_average

import zf_lightning.models.classifier as classifier_module  # noqa: E402
from zf_lightning.cli.common import finish_loggers, instantiate_group, instantiate_loggers, log_config  # noqa: E402
from zf_lightning.config import config_dir  # noqa: E402
from zf_lightning.data.sampling import mix_seed  # noqa: E402
from zf_lightning.models import build_network  # noqa: E402

GOAL = 0.95
BATCH_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)
RENORMALIZE = classifier_module.renormalize_filters_


# ------------------------------------------------------------------------------------------------ data
class InMemoryData(L.LightningDataModule):
    """The synthetic datamodule's batches, already materialised; its state (the mean image) goes into checkpoints."""

    def __init__(self, source, train: list, val: list) -> None:
        super().__init__()
        self.source, self.train, self.val = source, train, val

    def train_dataloader(self):
        return Batches(self.train)

    def val_dataloader(self):
        return Batches(self.val)

    def state_dict(self) -> dict:
        return self.source.state_dict()


def materialise(cfg, n_train: int, n_val: int) -> InMemoryData:
    """n_train full training batches from the datamodule's own loader (seeded), n_val validation batches."""
    datamodule = instantiate(cfg.data)
    datamodule.num_workers = 0
    datamodule.prepare_data()  # the mean image, computed once (cached)
    datamodule.setup("fit")
    torch.manual_seed(cfg.seed)
    train = full_batches(
        datamodule.train_dataloader, datamodule.batch_size, n_train, "training"
    )  # round again: new crops
    val = []
    for images, labels in datamodule.val_dataloader():
        val.append((images, labels))
        if len(val) == n_val:
            break
    return InMemoryData(datamodule, train, val)


# ------------------------------------------------------------------------------------------------ stopwatches
class Stopwatches:
    """Seconds by name for each batch, charged to the batch the clock says is running (None: not timed)."""

    def __init__(self, window: range) -> None:
        self.window = window
        self.batch: int | None = None
        self.seconds: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._gc_started = 0.0
        self._threads: list[dict[str, float]] = []

    def start_batch(self, index: int) -> None:
        """Called at the start of every training batch; the CPU of background threads is read at the window's ends."""
        self.batch = index
        if index in (self.window.start, self.window.stop):
            self._threads.append(thread_cpu_seconds())

    def thread_ms_per_step(self) -> dict[str, float]:
        """CPU ms per timed step of each Python thread other than the main one (they run beside the training)."""
        if len(self._threads) != 2 or not len(self.window):
            return {}
        before, after = self._threads
        return {name: 1e3 * (seconds - before.get(name, 0.0)) / len(self.window) for name, seconds in after.items()}

    def add(self, name: str, seconds: float) -> None:
        if self.batch is not None:
            self.seconds[self.batch][name] += seconds

    def wrap(self, name: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(name, time.perf_counter() - started)

        timed.__wrapped__ = function
        return timed

    def gc_callback(self, phase: str, info: dict) -> None:
        """gc.callbacks entry: Python's cyclic garbage collections, by generation."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.add(
                f"Python garbage collection (gen {info.get('generation')})", time.perf_counter() - self._gc_started
            )

    def __enter__(self) -> Stopwatches:
        gc.callbacks.append(self.gc_callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self.gc_callback)
        self.batch = None

    def per_step_ms(self) -> dict[str, float]:
        """Mean ms per timed step (periodic costs such as logging every n steps spread over the steps)."""
        window = self.window
        names = {name for batch in window for name in self.seconds.get(batch, {})}
        return {name: 1e3 * sum(self.seconds.get(b, {}).get(name, 0.0) for b in window) / len(window) for name in names}


def thread_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of each live Python thread but the main one, by class and name (Linux /proc)."""
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        if thread is threading.main_thread() or thread.native_id is None:
            continue
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        label = "" if re.fullmatch(r"Thread-\d+( \(.*\))?", thread.name) else f" ({thread.name})"
        name = f"{type(thread).__module__.split('.')[0]} {type(thread).__name__}{label}"
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def mark() -> tuple[float, float, int]:
    """(wall clock, CPU seconds of this process's threads, minor page faults so far)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime, usage.ru_minflt


class StepClock(L.Callback):
    """First callback: a timestamp at the start of every training batch; tells the stopwatches which batch runs."""

    def __init__(self, watches: Stopwatches | None = None) -> None:
        self.stamps: list[tuple[float, float, int]] = []
        self.watches = watches

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.stamps.append(mark())
        if self.watches is not None:
            self.watches.start_batch(batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.watches is not None:
            self.watches.batch = None


class HookTimer(L.Callback):
    """Last callback: once the other callbacks have attached their forward hooks (epoch start), time those too."""

    def __init__(self, watches: Stopwatches) -> None:
        self.watches = watches

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        for module in pl_module.modules():
            for hooks, kind in (
                (module._forward_pre_hooks, "forward pre-hook"),
                (module._forward_hooks, "forward hook"),
            ):
                for key, hook in list(hooks.items()):
                    if not hasattr(hook, "__wrapped__"):
                        owner = getattr(hook, "__qualname__", type(hook).__name__).split(".")[0]
                        hooks[key] = self.watches.wrap(f"{owner} {kind}s on the network", hook)


def instrument(trainer: L.Trainer, model, watches: Stopwatches) -> None:
    """Stopwatches on everything the Lightning arm does per step that the hand loop does not."""
    for callback in trainer.callbacks:
        if isinstance(callback, (StepClock, HookTimer)):
            continue
        for hook in BATCH_HOOKS:
            if getattr(type(callback), hook) is not getattr(L.Callback, hook):
                setattr(
                    callback, hook, watches.wrap(f"callback {type(callback).__name__}.{hook}", getattr(callback, hook))
                )
    connector = trainer._logger_connector
    connector.update_train_step_metrics = watches.wrap(
        "logger connector: update_train_step_metrics (all loggers, every log_every_n_steps)",
        connector.update_train_step_metrics,
    )
    for logger in trainer.loggers:
        logger.log_metrics = watches.wrap(f"  of which {type(logger).__name__}.log_metrics", logger.log_metrics)
    model.train_metrics.update = watches.wrap(
        "torchmetrics: train_metrics.update (3 MulticlassAccuracy)", model.train_metrics.update
    )
    model.train_loss.update = watches.wrap(
        "torchmetrics: train_loss.update (the epoch's mean loss)", model.train_loss.update
    )
    model.log = watches.wrap("LightningModule.log('train/loss', on_step)", model.log)


class TerminalSink(io.TextIOWrapper):
    """/dev/null that says it is a terminal: Rich then renders its live progress bar at every refresh, as in an
    interactive `zf-train`, without the bar landing in this script's output."""

    def __init__(self) -> None:
        super().__init__(open(os.devnull, "wb"), encoding="utf-8", write_through=True)

    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------- CPU of helper processes
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    fields = file.read().rsplit(")", 1)[1].split()
                children[int(fields[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def helper_cpu_seconds() -> float:
    """CPU seconds used so far by this process's live child processes (the W&B service, wandb-core)."""
    if not os.path.isdir("/proc"):
        return float("nan")
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in _descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / ticks


# ------------------------------------------------------------------------------------------------ the arms
def hand_run(
    cfg, data: InMemoryData, watches: Stopwatches | None = None
) -> tuple[list[tuple[float, float, int]], dict]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # as train(): then the network is built
    # The default run reseeds dropout before every step (callbacks.step_seeding, torch.manual_seed(mix_seed(seed,
    # step, rank))): the same draws here, so that both arms end with the same weights. Dropout on CPU draws from
    # torch.default_generator alone, which is all this seeds (torch.manual_seed also queues CUDA/XPU seeding).
    entry = (cfg.get("callbacks") or {}).get("step_seeding")
    step_seed = entry.seed if entry is not None else None
    net = build_network(**OmegaConf.to_container(cfg.model.net, resolve=True))
    options = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    weight_decay = options.pop("weight_decay", 0.0)
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]
    optimizer = instantiate(options, _partial_=True)(groups)
    radius = cfg.model.filter_rms_radius
    watches = watches or Stopwatches(range(0))
    renormalize = watches.wrap("filter renormalisation", RENORMALIZE)
    reseed = watches.wrap(
        "dropout reseeding (hand loop: torch.default_generator.manual_seed(mix_seed(...)))",
        lambda step: torch.default_generator.manual_seed(mix_seed(step_seed, step, 0)),
    )
    net.train()
    stamps = []
    with watches:
        for index, (images, labels) in enumerate(data.train):
            stamps.append(mark())
            watches.start_batch(index)
            if step_seed is not None:
                reseed(index)
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(images), labels)
            loss.backward()
            optimizer.step()
            if radius is not None:
                renormalize(net, radius)
    return stamps, net.state_dict()


def lightning_run(
    cfg,
    data: InMemoryData,
    out: Path,
    watches: Stopwatches | None = None,
    bar: str = "terminal",
    module_only: bool = False,
):
    """As zf_lightning.cli.train.train builds and fits it (no test), with a clock callback first.

    Its console output (model summary, progress bar, W&B) goes to a sink: a terminal-like /dev/null for
    bar="terminal", a plain /dev/null (Rich then draws nothing per step, as when piped) for bar="pipe".
    module_only: the same module and Trainer options but none of the config's callbacks, no loggers, no progress
    bar, no checkpointing: what Lightning's loop and the module cost without the default run's extras.
    """
    sink = TerminalSink() if bar == "terminal" else open(os.devnull, "w")
    with (
        sink,
        contextlib.redirect_stdout(sink),
        contextlib.redirect_stderr(sink),
        watches or Stopwatches(range(0)) as watches,
    ):
        return _lightning_run(cfg, data, out, watches, module_only)


def _lightning_run(cfg, data: InMemoryData, out: Path, watches: Stopwatches, module_only: bool):
    cfg.paths.output_dir = str(out)
    out.mkdir(parents=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = instantiate(cfg.model)
    clock = StepClock(watches)
    if module_only:
        callbacks, loggers, extra = (
            [],
            [],
            {"enable_progress_bar": False, "enable_checkpointing": False, "enable_model_summary": False},
        )
    else:
        callbacks, loggers, extra = (
            instantiate_group(cfg.get("callbacks")),
            instantiate_loggers(cfg, out, resume=False),
            {},
        )
    trainer = instantiate(
        cfg.trainer, callbacks=[clock, *callbacks, HookTimer(watches)], logger=loggers or False, **extra
    )
    log_config(trainer.loggers, cfg, out)
    instrument(trainer, model, watches)
    classifier_module.renormalize_filters_ = watches.wrap("filter renormalisation", RENORMALIZE)
    status = "failed"
    helper_before = helper_cpu_seconds()
    try:
        trainer.fit(model, datamodule=data, weights_only=True)
        status = "success"
    finally:
        classifier_module.renormalize_filters_ = RENORMALIZE
        finish_loggers(trainer.loggers, status)
    helper = helper_cpu_seconds() - helper_before  # W&B service CPU over the whole fit
    assert len(clock.stamps) == len(data.train), (len(clock.stamps), len(data.train))
    return clock.stamps, model.net.state_dict(), helper


# ------------------------------------------------------------------------------------------------ report
def print_costs(arm_watches: dict[str, list[Stopwatches]], step_ms: dict[str, float]) -> None:
    """Mean ms per step of each stopwatched part, median over runs, per arm; the difference lightning - hand."""
    arms = list(arm_watches)
    hand_ms = step_ms["hand"]
    costs: dict[str, dict[str, float]] = defaultdict(dict)
    for arm, runs in arm_watches.items():
        per_run = [watches.per_step_ms() for watches in runs]
        for name in {n for run in per_run for n in run}:
            costs[name][arm] = statistics.median(run.get(name, 0.0) for run in per_run)
    print(
        f"per-step costs, stopwatched on the main thread (mean ms per timed step, median over runs; "
        f"% = lightning - hand, of the hand step {hand_ms:.1f} ms):"
    )
    header = "".join(f"{arm:>18}" for arm in arms)
    print(f"  {'':<84}{header}  lightning - hand")
    extras = {arm: 0.0 for arm in arms[1:]}
    nested = lambda name: name.startswith("  ")  # noqa: E731 - parts of the line above
    for name in sorted(costs, key=lambda n: (nested(n), -(costs[n].get("lightning", 0.0) - costs[n].get("hand", 0.0)))):
        row = costs[name]
        for arm in extras:
            if not nested(name):
                extras[arm] += row.get(arm, 0.0) - row.get("hand", 0.0)
        difference = row.get("lightning", 0.0) - row.get("hand", 0.0)
        cells = "".join(f"{row.get(arm, 0.0):15.2f} ms" for arm in arms)
        print(f"  {name[:84]:<84}{cells}  {difference:+7.2f} ms {100 * difference / hand_ms:+6.2f} %")
    threads: dict[str, dict[str, float]] = defaultdict(dict)
    for arm, runs in arm_watches.items():
        per_run = [watches.thread_ms_per_step() for watches in runs]
        for name in {n for run in per_run for n in run}:
            threads[name][arm] = statistics.median(run.get(name, 0.0) for run in per_run)
    print(
        "  background Python threads, CPU ms per step (not wall time: they compete with the 2 compute threads for "
        "cores "
        "and with the main thread for the GIL):"
    )
    for name in sorted(threads, key=lambda n: -threads[n].get("lightning", 0.0)):
        cells = "".join(f"{threads[name].get(arm, 0.0):15.2f} ms" for arm in arms)
        print(f"    {name[:82]:<82}{cells}")
    for arm, extra in extras.items():
        gap = step_ms[arm] - hand_ms
        print(
            f"  {arm} step - hand step: {gap:+.2f} ms ({100 * gap / hand_ms:+.2f} %) = stopwatched differences "
            f"{extra:+.2f} ms "
            f"+ the rest {gap - extra:+.2f} ms (Lightning's loop and hook dispatch, background threads, noise)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps at the start of each run left out of the timing")
    parser.add_argument("--repeats", type=int, default=5, help="runs per arm (interleaved)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step (default: the default run's 128)")
    parser.add_argument(
        "--width", type=float, default=0.25, help="ZFNet width multiplier (default: the default run's 0.25)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--bar",
        choices=("terminal", "pipe"),
        default="terminal",
        help="Rich progress bar as in a terminal (default: rendered, to /dev/null) or as when piped (not drawn)",
    )
    parser.add_argument(
        "--module-only-arm",
        action="store_true",
        help="a third arm: Lightning with the module alone (no callbacks, loggers, progress bar, checkpoints)",
    )
    parser.add_argument("overrides", nargs="*", help="further Hydra overrides of conf/train.yaml")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_MODE", "offline")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "zf_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    overrides = [
        "trainer.max_epochs=1",
        f"data.batch_size={args.batch_size}",
        f"model.net.width_multiplier={args.width}",
        "paths.output_dir=unused",
        *args.overrides,
    ]
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    total = args.warmup + args.steps + 1  # the last batch only closes the last timed step
    window = range(args.warmup, args.warmup + args.steps)
    data = materialise(cfg, total, n_val=2)
    arms = ["hand", "lightning", *(["lightning-module"] if args.module_only_arm else [])]

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | {os.cpu_count()} CPUs | "
        f"python {platform.python_version()} | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"lightning {L.__version__}"
    )
    print(f"load average before: {load_average()}")
    callbacks = ", ".join(type(c).__name__ for c in instantiate_group(cfg.callbacks))
    print(
        f"run: experiment quickstart, {cfg.model.net.arch} x{cfg.model.net.width_multiplier}, {cfg.data.crop_size} px "
        f"crops, "
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps, {args.repeats} runs "
        f"per arm "
        f"({', '.join(arms)}), interleaved"
    )
    print(
        f"lightning arm: callbacks {callbacks}; loggers {', '.join(cfg.logger)} (W&B offline); "
        f"log_every_n_steps {cfg.trainer.log_every_n_steps}; console output "
        + (
            "rendered as for a terminal (Rich redraws the bar every step), into /dev/null; "
            if args.bar == "terminal"
            else "as when piped (Rich draws no bar), into /dev/null; "
        )
        + "epoch 1 = a feature-evolution snapshot epoch (tracking hooks on)"
    )
    print(
        "timed: start of one training batch to the start of the next, the same in-memory batches in every arm "
        "(no input pipeline; startup, validation, checkpoints and epoch end not timed)"
    )

    step_times: dict[str, list[list[float]]] = {arm: [] for arm in arms}
    arm_watches: dict[str, list[Stopwatches]] = {arm: [] for arm in arms}
    helpers: list[float] = []
    differences = []
    cpu: dict[str, list[float]] = {arm: [] for arm in arms}
    faults: dict[str, list[float]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        hand_run(
            cfg, InMemoryData(None, data.train[: args.warmup + 1], [])
        )  # warm-up of the process: allocator, kernels
        for repeat in range(args.repeats):
            order = arms if repeat % 2 == 0 else arms[::-1]
            weights = {}
            for arm in order:
                watches = Stopwatches(window)
                if arm == "hand":
                    stamps, weights[arm] = hand_run(cfg, data, watches)
                else:
                    out = Path(tmp) / f"{arm}{repeat}"
                    stamps, weights[arm], helper = lightning_run(
                        cfg, data, out, watches, args.bar, module_only=arm != "lightning"
                    )
                    if arm == "lightning":
                        helpers.append(helper)
                arm_watches[arm].append(watches)
                steps = [stamps[i + 1][0] - stamps[i][0] for i in window]
                step_times[arm].append(steps)
                cpu[arm].append((stamps[window.stop][1] - stamps[window.start][1]) / sum(steps))
                faults[arm].append((stamps[window.stop][2] - stamps[window.start][2]) / len(window))
                print(
                    f"  repeat {repeat} {arm:>16}: {args.batch_size * len(steps) / sum(steps):7.1f} images/s "
                    f"(mean step {1e3 * statistics.mean(steps):6.1f} ms, median {1e3 * statistics.median(steps):6.1f} "
                    f"ms)",
                    flush=True,
                )
            differences.append(
                max(float((weights["hand"][k] - weights["lightning"][k]).abs().max()) for k in weights["hand"])
            )

    print(f"load average after: {load_average()} (other processes on the machine skew every arm)")
    print(
        f"same work: largest |weight difference| hand vs lightning after {total} steps, per repeat: "
        f"{fmt(differences, '.1e')}"
    )
    throughput = {arm: [args.batch_size * len(s) / sum(s) for s in runs] for arm, runs in step_times.items()}
    medians = {arm: statistics.median(v) for arm, v in throughput.items()}
    step_ms = {arm: 1e3 * args.batch_size / medians[arm] for arm in arms}  # mean step of the median run
    for arm in arms:
        print(
            f"{arm:>16}: median {medians[arm]:7.1f} images/s (all: {fmt(throughput[arm])}); {step_ms[arm]:.1f} ms per "
            f"step"
        )
    step_median = {arm: statistics.median(t for run in runs for t in run) for arm, runs in step_times.items()}
    for arm in arms[1:]:
        paired = [other / hand for hand, other in zip(throughput["hand"], throughput[arm])]
        ratio = medians[arm] / medians["hand"]
        goal = f"; goal >= {GOAL} ({'met' if ratio >= GOAL else 'NOT met'})" if arm == "lightning" else " (diagnostic)"
        print(f"{arm} / hand images/s: {ratio:.3f} (medians of runs){goal}")
        print(
            f"    paired per repeat: {fmt(paired, '.3f')}; best run / best run: "
            f"{max(throughput[arm]) / max(throughput['hand']):.3f}; "
            f"from the median step time over all timed steps: {step_median['hand'] / step_median[arm]:.3f}"
        )
    for arm in arms:
        print(
            f"{arm:>16}: CPUs busy in this process during the timed steps {fmt(cpu[arm], '.2f')}; "
            f"minor page faults per step {fmt(faults[arm], '.0f')}"
        )
    print(
        f"W&B service (child processes) CPU over each whole lightning fit: {fmt(helpers, '.2f')} s (beside the "
        f"training threads)"
    )
    print_costs(arm_watches, step_ms)


if __name__ == "__main__":
    main()

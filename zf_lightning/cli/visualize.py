"""zf-visualize: the paper's feature figures from a checkpoint.

    zf-visualize top9 ckpt_path=PATH [split=val] [layers=[1,5]] [maps_per_layer=16] [+maps={5:[3,17]}]
    zf-visualize filters ckpt_paths=[ALEXNET.ckpt,ZFNET.ckpt]

Each command is a Hydra app (conf/visualize_<command>.yaml): overrides, multiruns and run directories
work as for zf-train.
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from zf_lightning.cli.common import (
    finish_loggers,
    instantiate_loggers,
    load_checkpoint_with_data,
    log_config,
    log_images,
    output_dir_of,
    resolve_device,
    run_app,
    run_summary,
)
from zf_lightning.config import config_dir
from zf_lightning.config.checker import validate_config
from zf_lightning.deconv import Deconvnet
from zf_lightning.deconv.maps import choose_maps
from zf_lightning.deconv.topk import (
    find_top_activations,
    project_all_top_activations,
    project_top_activations,
)
from zf_lightning.utils.io import atomic_write_npz
from zf_lightning.visualize.figures import (
    blocks_grid,
    contrast_stretch,
    filters_grid,
    save_png,
    side_by_side,
    top9_figure,
)


def top9(cfg: DictConfig) -> dict[str, Any]:
    """Fig. 2: the top-k activations of the chosen maps over a split, their projections and patches."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    output_dir = output_dir_of(cfg)

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        model, datamodule = load_checkpoint_with_data(cfg.ckpt_path, cfg.data)
        net = model.net.to(device).eval()
        deconv = Deconvnet(net)
        chosen = choose_maps(
            deconv, cfg.layers, cfg.maps_per_layer, cfg.seed, cfg.get("maps"), owner="zf-visualize top9"
        )
        dataset = datamodule.split_dataset(cfg.split)
        display = datamodule.split_dataset(cfg.split, display=True)
        if cfg.max_images is not None:
            dataset = Subset(dataset, range(min(cfg.max_images, len(cast(Sized, dataset)))))
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        log_config(loggers, cfg, output_dir)

        started = time.perf_counter()
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
        batches = _indexed_batches(loader, device)
        found = find_top_activations(deconv, batches, chosen, k=cfg.top_k)
        scan_s = time.perf_counter() - started

        def load(source: Dataset) -> Callable[[list[int]], torch.Tensor]:
            return lambda indices: torch.stack([source[i][0] for i in indices]).to(device)

        layers: dict[str, Any] = {}
        started = time.perf_counter()
        pngs = {}
        all_projected = project_all_top_activations(deconv, found, load(dataset), load(display), method=cfg.method)
        for layer, projected in all_projected.items():
            png = save_png(top9_figure(projected.projections, projected.patches), output_dir / f"top9_layer{layer}.png")
            npz = atomic_write_npz(projected.as_arrays(), output_dir / f"top9_layer{layer}.npz")
            pngs[f"top9/layer{layer}"] = png
            layers[str(layer)] = {
                "maps": projected.top.maps.tolist(),
                "receptive_field": list(projected.receptive_field.size),
                "png": str(png),
                "npz": str(npz),
            }
        project_s = time.perf_counter() - started
        log_images(loggers, pngs)
        finish_loggers(loggers)
        summary.update(
            {
                "checkpoint": str(cfg.ckpt_path),
                "split": cfg.split,
                "num_images": len(cast(Sized, dataset)),
                "method": cfg.method,
                "layers": layers,
                "timing_s": {"scan": round(scan_s, 3), "project": round(project_s, 3)},
            }
        )

    return summary


def _indexed_batches(loader: DataLoader, device: torch.device):
    """(images, dataset indices) per batch of a sequential loader."""
    seen = 0
    for images, _ in loader:
        yield images.to(device), torch.arange(seen, seen + len(images))
        seen += len(images)


def filter_statistics(weight: torch.Tensor) -> dict[str, float]:
    """RMS of each filter: the paper's Fig. 6 points at 'dead' filters, here those under 5% of the largest RMS."""
    rms = weight.detach().float().pow(2).mean(dim=(1, 2, 3)).sqrt()
    return {
        "filters": int(len(rms)),
        "rms_mean": float(rms.mean()),
        "rms_max": float(rms.max()),
        "dead_filters": int((rms < 0.05 * rms.max()).sum()),
    }


def filters(cfg: DictConfig) -> dict[str, Any]:
    """Fig. 6: layer-1 filters of one or more checkpoints side by side, and their layer-2 projections."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    output_dir = output_dir_of(cfg)
    ckpt_paths = [str(path) for path in cfg.ckpt_paths]

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        # Load and check every checkpoint before drawing anything.
        loaded = [load_checkpoint_with_data(path, cfg.data) for path in ckpt_paths]
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        log_config(loggers, cfg, output_dir)
        titles, filter_panels, projection_panels, arrays, stats = [], [], [], {}, {}
        for position, ((model, datamodule), path) in enumerate(zip(loaded, ckpt_paths)):
            net = model.net.to(device).eval()
            deconv = Deconvnet(net)
            conv1 = cast(nn.Conv2d, deconv.features[deconv.conv_indices[0]])
            kernel, stride = f"{conv1.kernel_size[0]}x{conv1.kernel_size[1]}", conv1.stride[0]
            title = f"{model.hparams['net'].get('arch', '?')} conv1 {kernel}/{stride} ({Path(path).stem})"
            titles.append(title)
            filter_panels.append(filters_grid(conv1.weight))
            stats[path] = filter_statistics(conv1.weight)
            arrays[f"ckpt{position}_layer1_filters"] = conv1.weight.detach().cpu().numpy()

            if deconv.num_layers >= 2:
                dataset = datamodule.split_dataset(cfg.split)
                display = datamodule.split_dataset(cfg.split, display=True)
                if cfg.max_images is not None:
                    dataset = Subset(dataset, range(min(cfg.max_images, len(cast(Sized, dataset)))))
                maps = choose_maps(deconv, [2], cfg.layer2_maps, cfg.seed, owner="zf-visualize filters")[2]
                loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
                top = find_top_activations(deconv, _indexed_batches(loader, device), {2: maps}, k=1)[2]
                load = lambda source: lambda idx: torch.stack([source[i][0] for i in idx]).to(device)  # noqa: E731
                projected = project_top_activations(deconv, top, load(dataset), load(display), method=cfg.method)
                projection_panels.append(blocks_grid(contrast_stretch(projected.projections.transpose(0, 1)), 48))
                arrays.update(projected.as_arrays(prefix=f"ckpt{position}_layer2_"))
        pngs = {
            "filters/layer1": side_by_side(filter_panels, titles, output_dir / "filters_layer1.png", "Layer-1 filters")
        }
        if projection_panels:
            pngs["filters/layer2_projections"] = side_by_side(
                projection_panels,
                titles,
                output_dir / "layer2_projections.png",
                "Layer-2 features: strongest activation of each map, projected",
            )
        npz = atomic_write_npz(arrays, output_dir / "filters.npz")
        log_images(loggers, pngs)
        finish_loggers(loggers)
        summary.update(
            {
                "checkpoints": ckpt_paths,
                "titles": titles,
                "layer1": stats,
                "png": {key: str(path) for key, path in pngs.items()},
                "npz": str(npz),
            }
        )

    return summary


COMMANDS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {"top9": top9, "filters": filters}


def main() -> None:
    command = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        sys.exit(
            f"zf-visualize: error: the command is one of {', '.join(COMMANDS)}, got {command or 'nothing'}{hint}; "
            f"usage: zf-visualize {{{','.join(COMMANDS)}}} [hydra overrides]"
        )
    task = COMMANDS[command]
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=f"visualize_{command}")(
        lambda cfg: run_app(cfg, task, f"zf-visualize {command}")
    )()


if __name__ == "__main__":
    main()

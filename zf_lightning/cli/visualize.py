"""zf-visualize: the paper's feature figures from a checkpoint.

    zf-visualize top9 ckpt_path=PATH [split=val] [layers=[1,5]] [maps_per_layer=16] [+maps={5:[3,17]}]
    zf-visualize top9 pretrained=torchvision pretrained.name=resnet18 layers=[layer4] images.image_dir=DIR
    zf-visualize filters ckpt_paths=[ALEXNET.ckpt,ZFNET.ckpt]

Each command is a Hydra app (conf/visualize_<command>.yaml): overrides, multiruns and run directories
work as for zf-train.
"""

from __future__ import annotations

import difflib
import sys
import time
from collections.abc import Callable, Sized
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
    log_config,
    log_images,
    output_dir_of,
    resolve_device,
    run_app,
    run_summary,
)
from zf_lightning.cli.sources import NetworkSource, indexed_batches, network_source
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
    panels_figure,
)
from zf_lightning.visualize.style import save_figure, styled
from zf_lightning.visualize.top9_figure import top9_figure, top9_overview


def top9(cfg: DictConfig) -> dict[str, Any]:
    """Fig. 2: the top-k activations of the chosen maps over a split, their projections and patches."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    output_dir = output_dir_of(cfg)

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        source = network_source(cfg)
        net = source.net.to(device).eval()
        deconv = Deconvnet(net)
        chosen = choose_maps(
            deconv, list(cfg.layers), cfg.maps_per_layer, cfg.seed, cfg.get("maps"), owner="zf-visualize top9"
        )
        dataset, display, scanned = scan_datasets(cfg, source)
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        log_config(loggers, cfg, output_dir)

        started = time.perf_counter()
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
        total = len(cast(Sized, dataset))
        batches = indexed_batches(loader, device, total, "zf-visualize top9: scanning")
        found = find_top_activations(deconv, batches, chosen, k=cfg.top_k)
        scan_s = time.perf_counter() - started

        def load(source: Dataset) -> Callable[[list[int]], torch.Tensor]:
            return lambda indices: torch.stack([source[i][0] for i in indices]).to(device)

        layers: dict[str, Any] = {}
        started = time.perf_counter()
        pngs, captions = {}, {}
        all_projected = project_all_top_activations(deconv, found, load(dataset), load(display), method=cfg.method)
        image_size = (source.crop_size, source.crop_size)  # every scanned image is its centre crop
        formats = list(cfg.get("figure_formats") or ["png"])
        with styled():
            for layer, projected in all_projected.items():
                maps = projected.top.maps.tolist()
                title = (
                    f"{source.description}: layer {layer}, top-{cfg.top_k} activations of maps {_shorten(maps)} "
                    f"over {total} images ({cfg.method})"
                )
                png = save_figure(
                    top9_figure(projected, image_size, title), output_dir / f"top9_layer{layer}.png", formats
                )
                npz = atomic_write_npz(projected.as_arrays(), output_dir / f"top9_layer{layer}.npz")
                pngs[f"top9/layer{layer}"], captions[f"top9/layer{layer}"] = png, title
                layers[str(layer)] = {
                    "title": title,
                    "maps": maps,
                    "receptive_field": list(projected.receptive_field.size),
                    "png": str(png),
                    "npz": str(npz),
                }
            overview_title = f"{source.description}: top-{cfg.top_k} projections of each layer ({cfg.method})"
            overview = top9_overview(all_projected, image_size, overview_title)
            pngs["top9/overview"] = save_figure(overview, output_dir / "top9_overview.png", formats)
            captions["top9/overview"] = overview_title
        project_s = time.perf_counter() - started
        log_images(loggers, pngs, captions)
        finish_loggers(loggers)
        summary.update(
            {
                **source.summary(),
                **scanned,
                "num_images": total,
                "method": cfg.method,
                "layers": layers,
                "overview_png": str(pngs["top9/overview"]),
                "timing_s": {"scan": round(scan_s, 3), "project": round(project_s, 3)},
            }
        )

    return summary


def scan_datasets(cfg: DictConfig, source: NetworkSource) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """What a figure scans: the user's folder (images.image_dir, searched recursively) or the split, as the network's
    inputs and as figures show them, cut to `max_images`; and what it was, for summary.json."""
    from zf_lightning.data.user_images import UserImages

    image_dir = cfg.images.image_dir if cfg.get("images") is not None else None
    if image_dir is not None:
        dataset: Dataset = UserImages(image_dir, transform=source.transform, recursive=True, decode_up_front=False)
        display: Dataset = UserImages(
            image_dir, transform=source.display_transform, recursive=True, decode_up_front=False
        )
        scanned: dict[str, Any] = {"image_dir": str(image_dir)}
    else:
        dataset, display = source.split_dataset(cfg.split), source.split_dataset(cfg.split, display=True)
        scanned = {"split": cfg.split}
    if cfg.max_images is not None:
        dataset = Subset(dataset, range(min(cfg.max_images, len(cast(Sized, dataset)))))
    return dataset, display, scanned


def _shorten(values: list[int], shown: int = 8) -> str:
    return str(values) if len(values) <= shown else f"[{', '.join(map(str, values[:shown]))}, ... {len(values)} maps]"


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
    ckpt_paths = [str(path) for path in cfg.ckpt_paths or []]

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        # Load and check every network before drawing anything.
        sources = [network_source(cfg, path) for path in ckpt_paths] if ckpt_paths else [network_source(cfg)]
        loggers = instantiate_loggers(cfg, output_dir, resume=False)
        log_config(loggers, cfg, output_dir)
        titles, filter_panels, projection_panels, arrays, stats = [], [], [], {}, {}
        projection_titles: list[str] = []
        for position, source in enumerate(sources):
            net = source.net.to(device).eval()
            deconv = Deconvnet(net)
            convs = [module for module in net.modules() if isinstance(module, nn.Conv2d)]
            conv1 = convs[0]
            kernel, stride = f"{conv1.kernel_size[0]}x{conv1.kernel_size[1]}", conv1.stride[0]
            title = f"{source.description}: conv1 {kernel}/{stride}"
            titles.append(title)
            filter_panels.append(filters_grid(conv1.weight))
            stats[source.checkpoint or source.description] = filter_statistics(conv1.weight)
            arrays[f"ckpt{position}_layer1_filters"] = conv1.weight.detach().cpu().numpy()

            if len(convs) >= 2:
                dataset, display, _ = scan_datasets(cfg, source)
                maps = choose_maps(deconv, [2], cfg.layer2_maps, cfg.seed, owner="zf-visualize filters")[2]
                loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
                total = len(cast(Sized, dataset))
                batches = indexed_batches(loader, device, total, "zf-visualize filters: scanning")
                top = find_top_activations(deconv, batches, {2: maps}, k=1)[2]
                load = lambda source: lambda idx: torch.stack([source[i][0] for i in idx]).to(device)  # noqa: E731
                projected = project_top_activations(deconv, top, load(dataset), load(display), method=cfg.method)
                projection_panels.append(blocks_grid(contrast_stretch(projected.projections.transpose(0, 1)), 48))
                projection_titles.append(
                    f"{source.description}: layer 2, {len(maps)} maps over {total} images ({cfg.method})"
                )
                arrays.update(projected.as_arrays(prefix=f"ckpt{position}_layer2_"))
        formats = list(cfg.get("figure_formats") or ["png"])
        with styled():
            filters_title = "Layer-1 filters (Fig. 6), each min-max scaled on its own"
            pngs = {
                "filters/layer1": save_figure(
                    panels_figure(filter_panels, titles, filters_title), output_dir / "filters_layer1.png", formats
                )
            }
            captions = {"filters/layer1": filters_title}
            if projection_panels:
                projection_title = "Layer-2 features (Fig. 6): the strongest activation of each map, projected"
                pngs["filters/layer2_projections"] = save_figure(
                    panels_figure(projection_panels, projection_titles, projection_title),
                    output_dir / "layer2_projections.png",
                    formats,
                )
                captions["filters/layer2_projections"] = projection_title
        npz = atomic_write_npz(arrays, output_dir / "filters.npz")
        log_images(loggers, pngs, captions)
        finish_loggers(loggers)
        summary.update(
            {
                "checkpoints": ckpt_paths,
                "networks": [source.description for source in sources],
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

"""zf-analyze: the paper's analyses of a trained network.

    zf-analyze occlusion ckpt_path=PATH [images.image_dir=DIR | images.split=val images.max_images=8]
    zf-analyze invariance ckpt_path=PATH [images...]
    zf-analyze correspondence ckpt_path=PATH correspondence.boxes=BOXES.yaml images.image_dir=DIR

Each command is a Hydra app (conf/analyze_<command>.yaml; the image source is the `images` group). It
writes a PNG figure, the raw numbers (npz and CSV) and summary.json in its run directory, and logs them
to W&B. Every input (checkpoint, images, labels, boxes) is checked before any analysis runs.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torchvision.transforms.v2.functional import get_size

from zf_lightning.cli.common import (
    finish_loggers,
    job_loggers,
    log_images,
    output_dir_of,
    resolve_device,
    run_app,
    run_summary,
)
from zf_lightning.cli.sources import NetworkSource, network_source
from zf_lightning.config import config_dir
from zf_lightning.config.checker import validate_config
from zf_lightning.data.user_images import UserImages
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_write_bytes, atomic_write_npz
from zf_lightning.visualize.style import save_figure, styled

if TYPE_CHECKING:
    import pandas as pd

    from zf_lightning.analysis.occlusion import OcclusionResult


@dataclass
class AnalysisImages:
    """The images an analysis runs on, as the network sees them and as a figure shows them."""

    names: list[str]
    inputs: torch.Tensor  # (N, C, h, w), normalised as in training
    display: torch.Tensor  # (N, 3, h, w) in [0, 1], the same crop
    targets: torch.Tensor  # (N,) int64
    # "labels" (given), "folders" (class sub-folders), "dataset" (the split's) or "predicted" (the model's top class)
    label_source: str
    original_sizes: list[tuple[int, int]]  # (height, width) before resizing, the frame of part boxes
    class_names: list[str] | None


def check_source(images_cfg: DictConfig) -> None:
    """Exactly one source: a folder of the user's images or a split of the datamodule."""
    if images_cfg.image_dir is None and images_cfg.split is None:
        raise InputError(
            "images: give images.image_dir=FOLDER (your images) or images.split=train|val|test (the datamodule's)"
        )
    if images_cfg.image_dir is not None and images_cfg.labels is None and images_cfg.get("require_labels", False):
        raise InputError("images.labels is required here: a file name -> class mapping (inline or a .json/.yaml file)")
    if images_cfg.max_images is not None and images_cfg.max_images < 1:
        raise InputError(f"images.max_images must be >= 1 or null, got {images_cfg.max_images}")


def load_images(images_cfg: DictConfig, source: NetworkSource) -> AnalysisImages:
    """Decode and check every image (and its label) up front; predicted labels where none are given."""
    check_source(images_cfg)
    datamodule = source.datamodule
    transform, display_transform = source.transform, source.display_transform
    num_classes = source.num_classes
    if images_cfg.image_dir is not None:
        class_names = source.class_names
        labels = images_cfg.labels
        labels = cast(dict, OmegaConf.to_container(labels)) if isinstance(labels, DictConfig) else labels
        folder = UserImages(images_cfg.image_dir, labels, class_names, num_classes, recursive=True)
        chosen = range(min(len(folder), images_cfg.max_images or len(folder)))
        raw = [folder[i][0] for i in chosen]
        names, sizes = [folder.names[i] for i in chosen], [folder.sizes[i] for i in chosen]
        targets = [folder.targets[i] for i in chosen]
        if labels is not None:
            label_source = "labels"
        else:  # sub-folders named after the network's classes label their images (an ImageFolder layout)
            label_source = "folders" if targets and min(targets) >= 0 else "predicted"
    else:
        split = images_cfg.split
        if split not in datamodule.stage_splits:
            raise InputError(f"images.split must be one of {list(datamodule.stage_splits)}, got {split!r}")
        raw_split: Any = datamodule.make_dataset(datamodule.stage_splits[split], None)  # sized and indexable
        class_names = (
            source.class_names
            if source.model is None and source.class_names
            else list(getattr(raw_split, "classes", []) or []) or None
        )
        indices = (
            list(images_cfg.indices)
            if images_cfg.indices is not None
            else list(range(min(len(raw_split), images_cfg.max_images or len(raw_split))))
        )
        bad = [i for i in indices if not 0 <= int(i) < len(raw_split)]
        if bad:
            raise InputError(f"images.indices {bad} out of range: split {split!r} has {len(raw_split)} images")
        items = [raw_split[int(i)] for i in indices]
        raw, targets = [image for image, _ in items], [int(label) for _, label in items]
        names = [f"{split}_{int(i):05d}" for i in indices]
        sizes = [tuple(get_size(image)) for image in raw]
        label_source = "dataset"
    inputs = torch.stack([transform(image) for image in raw])
    display = torch.stack([display_transform(image) for image in raw])
    if label_source == "predicted":
        with torch.no_grad():
            targets = source.net.eval()(inputs).argmax(dim=1).tolist()
    return AnalysisImages(
        names, inputs, display, torch.tensor(targets, dtype=torch.long), label_source, sizes, class_names
    )


def load_model_and_images(cfg: DictConfig) -> tuple[NetworkSource, AnalysisImages]:
    """The network (a checkpoint checked against `arch` and the data, or a pretrained one) and the images,
    before any analysis work."""
    check_source(cfg.images)
    source = network_source(cfg)
    if source.model is not None and cfg.get("arch") is not None:
        arch = source.model.hparams["net"].get("arch")
        if arch != cfg.arch:
            raise InputError(f"checkpoint {cfg.ckpt_path} is a {arch!r} network but the config says arch={cfg.arch!r}")
    images = load_images(cfg.images, source)
    return source, images


def _class_name(class_names: Sequence[str] | None, index: int) -> str:
    return class_names[index] if class_names and 0 <= index < len(class_names) else str(index)


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    atomic_write_bytes(frame.to_csv(index=False).encode(), path)
    return path


def _publish(
    loggers: list[Logger], figures: dict[str, Path], tables: dict[str, Any], captions: dict[str, str] | None = None
) -> None:
    """Figures (with their captions) and tables (pandas) to W&B, then close the loggers: one W&B run per
    analysis."""
    log_images(loggers, figures, captions)
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            for key, frame in tables.items():
                logger.log_table(key=key, dataframe=frame)
    finish_loggers(loggers)


def occlusion_rows(result: OcclusionResult, images: AnalysisImages) -> list[dict[str, Any]]:
    """One CSV row per image: its label, the tracked map, and where occlusion hurts the correct class most."""
    rows = []
    for b, name in enumerate(images.names):
        prob = result.true_class_prob[b]
        row, col = divmod(int(prob.argmin()), prob.shape[1])
        target = int(images.targets[b])
        rows.append(
            {
                "image": name,
                "target": target,
                "target_name": _class_name(images.class_names, target),
                "label_source": images.label_source,
                "chosen_map": int(result.chosen_map[b]),
                "p_target_unoccluded": float(result.probabilities[b, target]),
                "p_target_min": float(prob.min()),
                "p_target_min_top": int(result.rows[row]),
                "p_target_min_left": int(result.cols[col]),
                "top_class_unoccluded": int(result.probabilities[b].argmax()),
                "classes_in_map": sorted(int(c) for c in result.top_class[b].unique()),
            }
        )
    return rows


def projections_elsewhere(
    cfg: DictConfig, source: NetworkSource, engine: Any, result: OcclusionResult, device: torch.device
) -> tuple[dict[int, list[torch.Tensor]], dict[str, Any] | None]:
    """Fig. 7(c)'s "this map in other images": for each tracked map, its `occlusion.top_projections` strongest
    activations over the images the analysis draws from (the folder, or the whole split), projected and cut to
    the image. ({map: projections}, what was scanned) or ({}, None) when turned off."""
    from torch.utils.data import DataLoader

    from zf_lightning.cli.sources import indexed_batches
    from zf_lightning.deconv import Deconvnet
    from zf_lightning.deconv.topk import find_top_activations, project_all_top_activations
    from zf_lightning.visualize.top9_figure import inside_image

    count = int(cfg.occlusion.get("top_projections") or 0)
    if count < 1 or result.projection is None:
        return {}, None
    if cfg.images.image_dir is not None:
        dataset: Any = UserImages(
            cfg.images.image_dir, transform=source.transform, recursive=True, decode_up_front=False
        )
        scanned: dict[str, Any] = {"image_dir": str(cfg.images.image_dir)}
    else:
        dataset = source.split_dataset(cfg.images.split)
        scanned = {"split": cfg.images.split}
    deconv = Deconvnet(engine.model)
    maps = sorted({int(m) for m in result.chosen_map})
    loader = DataLoader(dataset, batch_size=64, shuffle=False)
    batches = indexed_batches(loader, device, len(dataset), "zf-analyze occlusion: other images")
    top = find_top_activations(deconv, batches, {result.layer: maps}, k=count)

    def load(indices: list[int]) -> torch.Tensor:
        return torch.stack([dataset[i][0] for i in indices]).to(device)

    projected = project_all_top_activations(deconv, top, load)[result.layer]
    size = result.projection.shape[-2:]
    elsewhere = {
        m: [
            inside_image(
                projected.projections[row, j].cpu(),
                int(projected.window_top[row, j]),
                int(projected.window_left[row, j]),
                size,
            )
            for j in range(projected.projections.shape[1])
            if float(projected.top.values[row, j]) > 0
        ]
        for row, m in enumerate(maps)
    }
    return elsewhere, {**scanned, "num_images": len(dataset), "per_map": count}


def occlusion(cfg: DictConfig) -> dict[str, Any]:
    """Fig. 7: occlusion maps (b)-(e) for each image."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    import pandas as pd

    from zf_lightning.analysis.occlusion import OcclusionSensitivity
    from zf_lightning.visualize.occlusion_figure import occlusion_figure

    output_dir = output_dir_of(cfg)
    settings = cfg.occlusion

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        source, images = load_model_and_images(cfg)
        engine = OcclusionSensitivity(
            source.net.to(device),
            layer=settings.layer,
            window=settings.window,
            stride=settings.stride,
            batch_size=settings.batch_size,
            include_partial=settings.include_partial,
            occluder_value=0.0,
        )
        crop = images.inputs.shape[-1]
        if max(engine.window) > crop:
            raise InputError(
                f"occlusion.window={settings.window} is larger than the {crop}x{crop} input; expected at most {crop}"
            )
        with job_loggers(cfg, output_dir) as loggers:
            result = engine.compute(images.inputs.to(device), images.targets.to(device))
            elsewhere, scanned = projections_elsewhere(cfg, source, engine, result, device)
            with styled():
                figure = occlusion_figure(
                    images.display, result, images.names, images.class_names, images.label_source, elsewhere
                )
                png = save_figure(figure, output_dir / "occlusion.png", list(cfg.get("figure_formats") or ["png"]))
            arrays = {
                key: value.cpu().numpy() for key, value in vars(result).items() if isinstance(value, torch.Tensor)
            }
            npz = atomic_write_npz({**arrays, "names": np.array(images.names)}, output_dir / "occlusion.npz")
            rows = occlusion_rows(result, images)
            frame = pd.DataFrame(rows)
            csv = _write_csv(frame, output_dir / "occlusion.csv")
            caption = f"occlusion (Fig. 7) of {len(images.names)} images, layer {result.layer}, {source.description}"
            _publish(
                loggers,
                {"occlusion/figure": png},
                {"occlusion/images": frame.astype({"classes_in_map": str})},
                {"occlusion/figure": caption},
            )
        summary.update(
            {
                **source.summary(),
                "num_images": len(images.names),
                "label_source": images.label_source,
                "positions": [len(result.rows), len(result.cols)],
                "panel_c_elsewhere": scanned,
                "images": rows,
                "files": {"png": str(png), "npz": str(npz), "csv": str(csv)},
            }
        )

    return summary


def invariance(cfg: DictConfig) -> dict[str, Any]:
    """Fig. 5: feature distances and p(correct class) under vertical translation, scale and rotation."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    import pandas as pd

    from zf_lightning.analysis.invariance import (
        TRANSFORMATIONS,
        Invariance,
        default_amounts,
    )
    from zf_lightning.visualize.invariance_figure import invariance_figure

    output_dir = output_dir_of(cfg)
    settings = cfg.invariance

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        kinds = list(settings.transformations or [])
        given = cast(dict, OmegaConf.to_container(settings.amounts)) if settings.amounts is not None else {}
        unknown = sorted((set(kinds) | set(given)) - set(TRANSFORMATIONS))
        if unknown or not kinds:
            raise InputError(
                f"invariance.transformations / invariance.amounts: {unknown or 'nothing'} given; expected some of "
                f"{list(TRANSFORMATIONS)}"
            )
        source, images = load_model_and_images(cfg)
        defaults = default_amounts(int(images.inputs.shape[-1]))
        amounts = {kind: defaults[kind] if given.get(kind) is None else list(given[kind]) for kind in kinds}
        engine = Invariance(
            source.net.to(device),
            layers=list(settings.layers),
            batch_size=settings.batch_size,
            relative=bool(settings.get("relative", False)),
        )
        with job_loggers(cfg, output_dir) as loggers:
            results = engine.compute(images.inputs.to(device), images.targets.to(device), amounts)
            labels = [
                f"{name} ({_class_name(images.class_names, int(t))})" for name, t in zip(images.names, images.targets)
            ]
            title = f"Invariance (Fig. 5): {source.description}, {len(images.names)} images"
            formats = list(cfg.get("figure_formats") or ["png"])
            png = invariance_figure(results, output_dir / "invariance.png", labels, title, formats)
            arrays = {"names": np.array(images.names)}
            for kind, result in results.items():
                arrays.update(result.as_arrays(prefix=f"{kind}_"))
            npz = atomic_write_npz(arrays, output_dir / "invariance.npz")
            frame = pd.concat([result.to_frame() for result in results.values()], ignore_index=True)
            frame.insert(2, "image_name", [images.names[i] for i in frame["image"]])
            csv = _write_csv(frame, output_dir / "invariance.csv")
            _publish(loggers, {"invariance/figure": png}, {"invariance/curves": frame}, {"invariance/figure": title})
        curves = {
            kind: {
                "amounts": result.amounts.tolist(),
                **{
                    f"mean_distance_layer{layer}": result.distances[layer].nanmean(dim=0).tolist()
                    for layer in result.layers
                },
                "mean_true_class_prob": result.true_class_prob.mean(dim=0).tolist(),
            }
            for kind, result in results.items()
        }
        summary.update(
            {
                **source.summary(),
                "num_images": len(images.names),
                "label_source": images.label_source,
                "layers": list(engine.layers),
                "curves": curves,
                "files": {"png": str(png), "npz": str(npz), "csv": str(csv)},
            }
        )

    return summary


def part_boxes_in_input(
    boxes_file: str | Path, images: AnalysisImages, source: NetworkSource
) -> tuple[list[int], list[dict]]:
    """The images named in the boxes file (their positions in `images`) and their boxes in input pixels."""
    from zf_lightning.analysis.correspondence import (
        Box,
        check_boxes_inside,
        load_part_boxes,
    )
    from zf_lightning.data.user_images import box_in_input

    boxes = load_part_boxes(boxes_file)
    position = {name: i for i, name in enumerate(images.names)}
    missing = [name for name in boxes if name not in position]
    if missing:
        raise InputError(
            f"correspondence.boxes names images that are not among the loaded images: {missing}; loaded: {images.names}"
        )
    chosen = [position[name] for name in boxes]
    check_boxes_inside(boxes, {name: images.original_sizes[position[name]] for name in boxes})
    crop = int(images.inputs.shape[-1])
    mapped = []
    for name, parts in boxes.items():
        converted = {}
        for part, box in parts.items():
            try:
                converted[part] = Box(
                    *box_in_input(box, images.original_sizes[position[name]], source.resize_size, crop, source.preset)
                )
            except ValueError as error:
                raise InputError(f"correspondence.boxes: part {part!r} of {name}: {error}") from None
        mapped.append(converted)
    return chosen, mapped


def correspondence(cfg: DictConfig) -> dict[str, Any]:
    """The paper's correspondence table: how consistently occluding a part changes layers 5 and 7."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    from zf_lightning.analysis.correspondence import Correspondence
    from zf_lightning.visualize.correspondence_figure import correspondence_figure

    output_dir = output_dir_of(cfg)
    settings = cfg.correspondence

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        device = resolve_device(cfg.device)
        if settings.boxes is None:
            raise InputError(
                "correspondence.boxes is required: a .json/.yaml file of image name -> "
                "{part: [left, top, right, bottom]}"
            )
        source, images = load_model_and_images(cfg)
        chosen, boxes = part_boxes_in_input(settings.boxes, images, source)
        engine = Correspondence(
            source.net.to(device),
            layers=list(settings.layers),
            repeats=settings.repeats,
            seed=cfg.seed,
            batch_size=settings.batch_size,
            tolerance=settings.tolerance,
        )
        with job_loggers(cfg, output_dir) as loggers:
            names = [images.names[i] for i in chosen]
            result = engine.compute(images.inputs[chosen].to(device), boxes)
            png = correspondence_figure(
                images.display[chosen],
                result,
                output_dir / "correspondence.png",
                names,
                settings.per_pair,
                list(cfg.get("figure_formats") or ["png"]),
            )
            npz = atomic_write_npz({**result.as_arrays(), "names": np.array(names)}, output_dir / "correspondence.npz")
            frame = result.to_frame(per_pair=settings.per_pair)
            frame.columns = [f"layer{layer}_{stat}" for layer, stat in frame.columns]
            frame = frame.reset_index()
            csv = _write_csv(frame, output_dir / "correspondence.csv")
            markdown = result.to_markdown(per_pair=settings.per_pair)
            atomic_write_bytes(markdown.encode(), output_dir / "correspondence.md")
            caption = f"correspondence of {len(names)} images, {source.description}"
            _publish(
                loggers,
                {"correspondence/figure": png},
                {"correspondence/table": frame},
                {"correspondence/figure": caption},
            )
        summary.update(
            {
                **source.summary(),
                "images": names,
                "parts": result.parts,
                "pairs": result.pairs,
                "per_pair": bool(settings.per_pair),
                "table": frame.to_dict(orient="records"),
                "table1": result.table1(per_pair=bool(settings.per_pair)),  # what zf-tables reads
                "markdown": markdown,
                "files": {
                    "png": str(png),
                    "npz": str(npz),
                    "csv": str(csv),
                    "markdown": str(output_dir / "correspondence.md"),
                },
            }
        )

    return summary


COMMANDS: dict[str, Callable[[DictConfig], dict[str, Any]]] = {
    "occlusion": occlusion,
    "invariance": invariance,
    "correspondence": correspondence,
}


def main() -> None:
    command = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        sys.exit(
            f"zf-analyze: error: the command is one of {', '.join(COMMANDS)}, got {command or 'nothing'}{hint}; "
            f"usage: zf-analyze {{{','.join(COMMANDS)}}} [hydra overrides]"
        )
    task = COMMANDS[command]
    hydra.main(version_base="1.3", config_path=config_dir(), config_name=f"analyze_{command}")(
        lambda cfg: run_app(cfg, task, f"zf-analyze {command}")
    )()


if __name__ == "__main__":
    main()

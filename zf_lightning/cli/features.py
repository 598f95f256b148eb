"""zf-features: the paper's feature-analysis table for one Caltech split.

    zf-features experiment=features_caltech101 ckpt_path=zfnet_imagenet.ckpt data.root=/data data.split_seed=0
    zf-features -m experiment=features_caltech256 ckpt_path=... data.root=... data.split_seed=0,1,2,3,4
    zf-features experiment=features_caltech101 pretrained=pytorchcv pretrained.name=zfnet data.root=/data

A pretrained network (`pretrained=...`) needs the paper's numbered layers: one of this project's networks or one
that converts to it (pytorchcv's zfnet, zfnetb, alexnet; torchvision's alexnet).

Features of every image are extracted once per checkpoint and cached (`paths.cache_dir`/features), so the
splits of a multirun and later runs reuse them; each split then trains every (classifier, layer) row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from zf_lightning.cli.common import (
    finish_loggers,
    job_loggers,
    output_dir_of,
    resolve_device,
    run_app,
    run_summary,
)
from zf_lightning.config import config_dir
from zf_lightning.config.checker import validate_config
from zf_lightning.utils.errors import InputError
from zf_lightning.utils.io import atomic_write_bytes, check_checkpoint


def parse_rows(rows: Sequence[str]) -> list[tuple[str, int]]:
    """["svm:1", "softmax:7", ...] -> [("svm", 1), ("softmax", 7), ...], checked."""
    from zf_lightning.transfer.feature_analysis import CLASSIFIERS, FEATURE_LAYERS

    parsed = []
    for row in rows:
        kind, _, layer = str(row).partition(":")
        if kind not in CLASSIFIERS or not layer.isdigit() or int(layer) not in FEATURE_LAYERS:
            raise InputError(
                f"rows: {row!r} is not <classifier>:<layer> with classifier in {list(CLASSIFIERS)} and layer in "
                f"{list(FEATURE_LAYERS)}"
            )
        parsed.append((kind, int(layer)))
    return parsed


def feature_analysis(cfg: DictConfig) -> dict[str, Any]:
    """The feature-analysis table of one split: every (classifier, layer) row, scored on the split's test images."""
    validate_config(cfg)  # also run by the Hydra callback before any directory exists; here for callers without it
    import pandas as pd

    from zf_lightning.models import ImageClassifier
    from zf_lightning.transfer.datamodule import CALTECH
    from zf_lightning.transfer.datasets import dataset_by_name
    from zf_lightning.transfer.feature_analysis import (
        BlockFeatures,
        cache_key,
        cached_features,
        extract_features,
        score_rows,
    )

    output_dir = output_dir_of(cfg)
    rows = parse_rows(cfg.rows)

    with run_summary(cfg) as summary:
        L.seed_everything(cfg.seed, workers=True)
        if cfg.data.dataset not in CALTECH:
            raise InputError(f"the feature analysis runs on {list(CALTECH)}, got data.dataset={cfg.data.dataset!r}")
        datamodule = instantiate(cfg.data)
        network_key: str | Path
        if cfg.get("pretrained") is not None:  # a network trained elsewhere, with its own input recipe
            net, transform, network_key, input_key, described = _pretrained_network(cfg)
        else:
            check_checkpoint(cfg.ckpt_path)
            model = ImageClassifier.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
            if model.hparams["net"].get("input_size") != datamodule.crop_size:
                raise InputError(
                    f"checkpoint {cfg.ckpt_path} was built for {model.hparams['net'].get('input_size')}px inputs but "
                    f"data.crop_size={datamodule.crop_size}"
                )
            net = model.net
            transform = datamodule.transforms()["val"]  # the centre crop, normalised with the checkpoint's mean image
            network_key = Path(cfg.ckpt_path)
            input_key = f"resize={datamodule.resize_size}|crop={datamodule.crop_size}|preset={datamodule.preset}"
            described = f"{model.hparams['net'].get('arch', '?')} ({Path(cfg.ckpt_path).name})"
        layers = sorted({layer for _, layer in rows})
        BlockFeatures(net, layers, cfg.grid)  # refuses a network without the paper's numbered layers, before any work
        dataset = dataset_by_name(datamodule.dataset, datamodule.root, transform=transform)
        key = cache_key(
            network_key, f"{datamodule.dataset}|root={datamodule.root.resolve()}", layers, cfg.grid, input_key
        )
        cache_file = datamodule.cache_dir / "features" / f"{key}.npz"
        device = resolve_device(cfg.device)
        with job_loggers(cfg, output_dir) as loggers:
            features, labels, hit = cached_features(
                cache_file,
                lambda: extract_features(net, dataset, layers, cfg.grid, cfg.batch_size, cfg.num_workers, device),
            )
            split = datamodule._split
            results = score_rows(features, labels, split.train, split.test, rows, cfg.regularisation, cfg.seed)
            frame = pd.DataFrame(
                [{"row": r.name, "classifier": r.classifier, "layer": r.layer, "accuracy": r.accuracy} for r in results]
            )
            csv = output_dir / "feature_analysis.csv"
            atomic_write_bytes(frame.to_csv(index=False).encode(), csv)
            for logger in loggers:
                logger.log_metrics({f"test/{r.name}": r.accuracy for r in results})
            finish_loggers(loggers)
        summary.update(
            {
                "checkpoint": None if cfg.get("ckpt_path") is None else str(cfg.ckpt_path),
                "network": described,
                "dataset": datamodule.dataset,
                "train_per_class": datamodule.train_per_class,
                "split_seed": datamodule.split_seed,
                "split_sizes": {"train": len(split.train), "test": len(split.test)},
                "feature_cache": {"file": str(cache_file), "hit": hit},
                "test": {f"test/{r.name}": r.accuracy for r in results},
                "files": {"csv": str(csv)},
            }
        )

    return summary


def _pretrained_network(cfg: DictConfig) -> tuple[nn.Module, Callable[[Any], torch.Tensor], str, str, str]:
    """(network, its input transform, a key naming the network and its weights, a key of the inputs, a
    description) of `cfg.pretrained`."""
    from zf_lightning.models.pretrained import load_network
    from zf_lightning.transfer.feature_analysis import file_identity

    spec = cast(dict, OmegaConf.to_container(cfg.pretrained, resolve=True))
    loaded = load_network(pretrained=spec)
    weights = spec.get("weights")
    weights_file = Path(str(weights)).expanduser() if weights is not None else None
    identity = file_identity(weights_file) if weights_file is not None and weights_file.is_file() else weights
    network_key = f"pretrained|{json.dumps({**spec, 'weights': identity}, sort_keys=True, default=str)}"
    recipe = loaded.preprocessing
    input_key = f"resize={recipe.resize_size}|crop={recipe.crop_size}|mean={recipe.mean}|std={recipe.std}"
    return loaded.net, recipe.transform(), network_key, input_key, loaded.source


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="features")
def main(cfg: DictConfig) -> None:
    run_app(cfg, feature_analysis, "zf-features")


if __name__ == "__main__":
    main()

"""zf-features: the paper's feature-analysis table for one Caltech split.

    zf-features experiment=features_caltech101 ckpt_path=zfnet_imagenet.ckpt data.root=/data data.split_seed=0
    zf-features -m experiment=features_caltech256 ckpt_path=... data.root=... data.split_seed=0,1,2,3,4

Features of every image are extracted once per checkpoint and cached (`paths.cache_dir`/features), so the
splits of a multirun and later runs reuse them; each split then trains every (classifier, layer) row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

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
        check_checkpoint(cfg.ckpt_path)
        model = ImageClassifier.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", weights_only=True)
        datamodule = instantiate(cfg.data)
        if model.hparams["net"].get("input_size") != datamodule.crop_size:
            raise InputError(
                f"checkpoint {cfg.ckpt_path} was built for {model.hparams['net'].get('input_size')}px inputs but "
                f"data.crop_size={datamodule.crop_size}"
            )
        layers = sorted({layer for _, layer in rows})
        transform = datamodule.transforms()["val"]  # the centre crop, normalised with the checkpoint's mean image
        dataset = dataset_by_name(datamodule.dataset, datamodule.root, transform=transform)
        key = cache_key(
            cfg.ckpt_path,
            f"{datamodule.dataset}|root={datamodule.root.resolve()}",
            layers,
            cfg.grid,
            f"resize={datamodule.resize_size}|crop={datamodule.crop_size}|preset={datamodule.preset}",
        )
        cache_file = datamodule.cache_dir / "features" / f"{key}.npz"
        device = resolve_device(cfg.device)
        with job_loggers(cfg, output_dir) as loggers:
            features, labels, hit = cached_features(
                cache_file,
                lambda: extract_features(model.net, dataset, layers, cfg.grid, cfg.batch_size, cfg.num_workers, device),
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
                "checkpoint": str(cfg.ckpt_path),
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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="features")
def main(cfg: DictConfig) -> None:
    run_app(cfg, feature_analysis, "zf-features")


if __name__ == "__main__":
    main()

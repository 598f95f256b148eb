"""Every Lightning callback, plugin and logger of the project; conf/callbacks/ has one file per callback."""

from zf_lightning.callbacks.evolution import FeatureEvolution
from zf_lightning.callbacks.fault_tolerance import (
    AtomicCheckpointIO,
    CheckpointOnSignal,
    Preempted,
    StepSeeding,
)
from zf_lightning.callbacks.filter_drift import FilterDrift
from zf_lightning.callbacks.loggers import LoggedRowsInCheckpoints, ResumableCSVLogger
from zf_lightning.callbacks.progress import RichProgressBar

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointOnSignal",
    "FeatureEvolution",
    "FilterDrift",
    "LoggedRowsInCheckpoints",
    "Preempted",
    "ResumableCSVLogger",
    "RichProgressBar",
    "StepSeeding",
]

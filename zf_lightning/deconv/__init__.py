"""The deconvnet (paper section 2.1): projecting feature activations back to pixel space, receptive-field
windows, the top-k search over a dataset and the choice of maps to follow."""

from zf_lightning.deconv.engine import (
    METHODS,
    MODES,
    SUPPORTED_MODULES,
    Deconvnet,
    Projections,
    ReceptiveField,
    cut_windows,
)

__all__ = ["METHODS", "MODES", "SUPPORTED_MODULES", "Deconvnet", "Projections", "ReceptiveField", "cut_windows"]

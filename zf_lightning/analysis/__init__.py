"""The paper's analyses of a trained network: occlusion (Fig. 7), invariance (Fig. 5), correspondence."""

from zf_lightning.analysis.correspondence import (
    Box,
    Correspondence,
    CorrespondenceResult,
    load_part_boxes,
    sign_hamming_delta,
)
from zf_lightning.analysis.features import LayerFeatures
from zf_lightning.analysis.invariance import (
    Invariance,
    InvarianceResult,
    default_amounts,
    transform_images,
)
from zf_lightning.analysis.occlusion import OcclusionResult, OcclusionSensitivity

__all__ = [
    "Box",
    "Correspondence",
    "CorrespondenceResult",
    "Invariance",
    "InvarianceResult",
    "LayerFeatures",
    "OcclusionResult",
    "OcclusionSensitivity",
    "default_amounts",
    "load_part_boxes",
    "sign_hamming_delta",
    "transform_images",
]

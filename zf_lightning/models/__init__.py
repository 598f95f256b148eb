"""Networks of the paper, the LightningModule that trains any of them, and networks trained elsewhere."""

from zf_lightning.models.alexnet import alexnet
from zf_lightning.models.classifier import ImageClassifier
from zf_lightning.models.convnet import PaperConvNet
from zf_lightning.models.pretrained import LoadedNetwork, Preprocessing, load_network, to_paper_network
from zf_lightning.models.registry import ARCHITECTURES, build_network
from zf_lightning.models.zfnet import zfnet

__all__ = [
    "ARCHITECTURES",
    "ImageClassifier",
    "LoadedNetwork",
    "PaperConvNet",
    "Preprocessing",
    "alexnet",
    "build_network",
    "load_network",
    "to_paper_network",
    "zfnet",
]

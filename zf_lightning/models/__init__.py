"""Networks of the paper and the LightningModule that trains any of them."""

from zf_lightning.models.alexnet import alexnet
from zf_lightning.models.classifier import ImageClassifier
from zf_lightning.models.convnet import PaperConvNet
from zf_lightning.models.registry import ARCHITECTURES, build_network
from zf_lightning.models.zfnet import zfnet

__all__ = ["ARCHITECTURES", "ImageClassifier", "PaperConvNet", "alexnet", "build_network", "zfnet"]

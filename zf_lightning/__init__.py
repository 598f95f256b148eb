"""zf-lightning: Zeiler & Fergus (2014) reproduced with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

"""Visualising what the units of a trained net respond to (paper section 2)."""

from zf_lightning.visualize.deconvnet import METHODS, MODES, SUPPORTED_MODULES, Deconvnet, Projections, ReceptiveField, cut_windows
from zf_lightning.visualize.evolution import FeatureEvolution

__all__ = ["METHODS", "MODES", "SUPPORTED_MODULES", "Deconvnet", "FeatureEvolution", "Projections", "ReceptiveField", "cut_windows"]

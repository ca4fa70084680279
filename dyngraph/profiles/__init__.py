"""Profiles: the one runner (:func:`depth_profile`, :func:`layer_matrix`) and its results
(:class:`DepthProfile`, :class:`LayerMatrix`)."""
from ._profile import DepthProfile, LayerMatrix
from ._runner import depth_profile, layer_matrix

__all__ = ["DepthProfile", "LayerMatrix", "depth_profile", "layer_matrix"]

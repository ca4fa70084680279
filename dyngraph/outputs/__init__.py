"""Outputs: one :func:`plot` and one :func:`log` for every result type; figures and TensorBoard
live only here, imported lazily, and never switch the user's matplotlib backend."""
from ._dispatch import drawable_types, log, plot, register_log, register_plot
from ._plot import new_figure, save_figure

__all__ = ["drawable_types", "log", "new_figure", "plot", "register_log",
           "register_plot", "save_figure"]

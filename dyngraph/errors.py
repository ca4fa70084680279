"""The exceptions and warnings dyngraph raises on purpose, to catch or filter by type.

Every other bad input is a ``ValueError`` or ``TypeError`` whose message names the argument and the
value (see ``docs/bad_inputs.md``).

Example:
    >>> import dyngraph as dg
    >>> issubclass(dg.errors.CorruptFileError, ValueError)
    True
"""
from ._io import CorruptFileError
from .graphs._graph import DegenerateLayerWarning

__all__ = ["CorruptFileError", "DegenerateLayerWarning"]

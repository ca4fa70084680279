"""Theory: the Layer-Peeled Model (Fang, He, Long, Su, PNAS 2021) solved numerically.

Its results (:class:`LayerPeeledSolution`, :class:`MinorityCollapseCurve`) are drawn by
``dg.plot`` and logged by ``dg.log``."""
from ._lpm import *  # noqa: F403
from ._lpm import __all__ as __all__

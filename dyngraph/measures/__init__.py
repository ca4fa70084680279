"""Measures: pure functions (the single source of truth) and the registry that lets the one
runner evaluate them by name.

Layer measures take ``(x, y, graph)``; pair measures prepare each representation once and score
pairs. ``available()`` lists them; ``@register(name)`` adds a user's own. Each private module
lists its public names in its own ``__all__``; they are re-exported here once.
"""
from . import _collapse, _community, _criteria, _dimension, _modularity, _registry, _similarity
from ._collapse import *  # noqa: F403
from ._community import *  # noqa: F403
from ._criteria import *  # noqa: F403
from ._dimension import *  # noqa: F403
from ._modularity import *  # noqa: F403
from ._registry import *  # noqa: F403
from ._similarity import *  # noqa: F403

__all__ = sorted(set(_collapse.__all__ + _community.__all__ + _criteria.__all__
                     + _dimension.__all__
                     + _modularity.__all__ + _registry.__all__ + _similarity.__all__))

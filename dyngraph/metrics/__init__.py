"""Functional metrics on snapshots and features. Each pure function is the single source of truth."""
from .modularity import community_contributions, modularity

__all__ = ["modularity", "community_contributions"]

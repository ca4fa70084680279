import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
# The suite is many small tensor ops; one intra-op thread avoids OpenMP spin on a 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def clustered(n_per_class: int, n_classes: int, dim: int, sep: float, seed: int = 0):
    """Gaussian blobs around orthogonal-ish centres; ``sep`` scales the class separation."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = sep * centres[y] + torch.randn(len(y), dim, generator=g)
    return x, y

"""Small ops run on one thread and give the caller's thread count back (issue 18, part 4)."""
import pytest
import torch

import dyngraph as dg
from dyngraph import _threads


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_modularity_runs_on_one_thread_and_restores(two_threads, monkeypatch):
    import dyngraph.measures._modularity as mod
    seen = []
    real = mod.community_sums

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)
    monkeypatch.setattr(mod, "community_sums", spy)
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    q = dg.modularity(ei, torch.tensor([0, 0, 1, 1]))
    assert seen == [1] and torch.get_num_threads() == 2
    monkeypatch.setattr(_threads, "SMALL_WORK", 0)  # everything counts as large: threads kept
    assert dg.modularity(ei, torch.tensor([0, 0, 1, 1])) == q
    assert seen == [1, 2]


def test_restored_after_an_error(two_threads):
    with pytest.raises(RuntimeError):
        with _threads.one_thread_if_small(10):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_symmetrize_and_snapshot_passes_give_threads_back(two_threads):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 5, generator=g), torch.arange(60) % 3
    ei, w = dg.knn_edges(x, 3)
    dg.graphs.symmetrize(ei, w, 60)
    dyn = dg.DynamicGraph([dg.graphs.build_snapshot(x, y, layer_name="a"),
                           dg.graphs.build_snapshot(x + 1, y, layer_name="b")])
    dyn.modularity()
    dyn.modularity_null(permutations=3)
    assert torch.get_num_threads() == 2

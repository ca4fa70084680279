"""Properties of ``dg.modularity`` / ``dg.measures.community_contributions`` on arbitrary small
weighted undirected graphs (self-loops included), against networkx and a dense-matrix oracle."""
import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

import dyngraph as dg

from .strategies import dense_adjacency, nx_modularity, pyg_edges, undirected_graphs


@given(undirected_graphs(), st.one_of(st.just(1.0), st.floats(0.0, 3.0)))
def test_equals_networkx(graph, resolution):
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    q = dg.modularity(ei, torch.tensor(comms), w, num_nodes=n, resolution=resolution)
    assert isinstance(q, float)
    assert abs(q - nx_modularity(n, pairs, weights, comms, resolution)) <= 1e-12


@given(undirected_graphs(), st.data())
def test_invariant_to_node_relabelling_and_edge_order(graph, data):
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    c = torch.tensor(comms)
    perm = torch.tensor(data.draw(st.permutations(range(n)), label="node permutation"))
    order = torch.tensor(data.draw(st.permutations(range(ei.shape[1])), label="entry order"))
    c2 = torch.empty_like(c)
    c2[perm] = c  # node v becomes perm[v] and keeps its community
    q = dg.modularity(ei, c, w, num_nodes=n)
    q2 = dg.modularity(perm[ei][:, order], c2, w[order], num_nodes=n)
    assert abs(q - q2) <= 1e-12


@given(undirected_graphs(), st.data())
def test_invariant_to_community_ids(graph, data):
    """Only which nodes share a community matters: any injective map of the ids (to huge values
    too) gives the same Q."""
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    k = max(comms) + 1
    new_ids = data.draw(st.lists(st.integers(0, 2 ** 40), min_size=k, max_size=k, unique=True),
                        label="new community ids")
    q = dg.modularity(ei, torch.tensor(comms), w, num_nodes=n)
    q2 = dg.modularity(ei, torch.tensor([new_ids[c] for c in comms]), w, num_nodes=n)
    assert abs(q - q2) <= 1e-12


@given(undirected_graphs())
def test_bounds(graph):
    """-1/2 <= Q < 1 at resolution 1 (Brandes et al. 2008), for non-negative weights."""
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    q = dg.modularity(ei, torch.tensor(comms), w, num_nodes=n)
    assert -0.5 - 1e-12 <= q < 1.0


@given(st.lists(undirected_graphs(max_nodes=8), min_size=1, max_size=4))
def test_batch_equals_per_graph(graphs):
    eis, ws, comms, batch = [], [], [], []
    offset = 0
    for b, (n, pairs, weights, comm) in enumerate(graphs):
        ei, w = pyg_edges(pairs, weights)
        eis.append(ei + offset)
        ws.append(w)
        comms.extend(comm)
        batch.extend([b] * n)
        offset += n
    q = dg.modularity(torch.cat(eis, 1), torch.tensor(comms), torch.cat(ws), num_nodes=offset,
                      batch=torch.tensor(batch))
    assert q.shape == (len(graphs),) and q.dtype == torch.float64
    for b, (n, pairs, weights, comm) in enumerate(graphs):
        ei, w = pyg_edges(pairs, weights)
        assert abs(float(q[b]) - dg.modularity(ei, torch.tensor(comm), w, num_nodes=n)) <= 1e-12


@given(undirected_graphs(), st.floats(0.0, 3.0))
def test_contributions_match_dense_formula(graph, resolution):
    """Each community's term ``Σ_{i,j∈c} A_ij / 2m − γ (d_c / 2m)²`` from the dense adjacency;
    ids without a node contribute 0; the terms sum to Q."""
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    c = torch.tensor(comms)
    terms = dg.measures.community_contributions(ei, c, w, num_nodes=n, resolution=resolution)
    a = dense_adjacency(n, pairs, weights)
    two_m = a.sum()
    deg = a.sum(1)
    cid = np.array(comms)
    assert terms.shape == (max(comms) + 1,)
    for k in range(max(comms) + 1):
        inside = cid == k
        ref = a[np.ix_(inside, inside)].sum() / two_m - resolution * (deg[inside].sum() / two_m) ** 2
        assert abs(float(terms[k]) - ref) <= 1e-12
    q = dg.modularity(ei, c, w, num_nodes=n, resolution=resolution)
    assert abs(float(terms.sum()) - q) <= 1e-12


@given(undirected_graphs(), st.integers(-60, 60))
def test_invariant_to_weight_scale(graph, p):
    """Q depends on weights only through their ratios: scaling them all by 2^p (exact) gives the
    same Q bit for bit, in the usual range of scales."""
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    c = torch.tensor(comms)
    assert dg.modularity(ei, c, w * 2.0 ** p, num_nodes=n) == dg.modularity(ei, c, w, num_nodes=n)


@given(undirected_graphs(), st.sampled_from([-700, -600, 600, 700]))
@example((3, [(0, 1), (1, 2)], [1.0, 1.0], [0, 0, 1]), -700)
def test_invariant_to_extreme_weight_scale(graph, p):
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    c = torch.tensor(comms)
    q = dg.modularity(ei, c, w * 2.0 ** p, num_nodes=n)
    assert math.isfinite(q) and abs(q - dg.modularity(ei, c, w, num_nodes=n)) <= 1e-12


@given(undirected_graphs(), st.data())
def test_one_direction_entries_are_refused(graph, data):
    """A stored entry i→j (i != j) without an equal reverse entry is a ValueError naming the
    contract, never a number (a one-direction kNN edge list is the typical case)."""
    n, pairs, weights, comms = graph
    ei, w = pyg_edges(pairs, weights)
    i = data.draw(st.integers(0, n - 1), label="i")
    j = data.draw(st.integers(0, n - 1).filter(lambda v: v != i), label="j")
    extra = data.draw(st.floats(0.01, 10.0), label="weight")
    ei2 = torch.cat([ei, torch.tensor([[i], [j]])], 1)
    w2 = torch.cat([w, torch.tensor([extra], dtype=torch.float64)])
    with pytest.raises(ValueError, match="undirected"):
        dg.modularity(ei2, torch.tensor(comms), w2, num_nodes=n)

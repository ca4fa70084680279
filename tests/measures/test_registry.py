"""The measure registry: built-ins, a user's own measures, errors."""
import pytest
import torch

import dyngraph as dg
from dyngraph.measures import _registry


def test_builtins_are_registered_by_kind():
    layer = set(dg.measures.available("layer"))
    pair = set(dg.measures.available("pair"))
    assert {"modularity", "twonn", "mle_id", "participation_ratio", "pca_dim", "nc1", "cdnv",
            "knn_purity", "graph_purity"} <= layer
    assert {"cka", "cka_unbiased", "mutual_knn", "knn_overlap", "graph",
            "modularity_distance"} <= pair
    assert not layer & pair
    assert set(dg.measures.available()) == layer | pair
    assert all(isinstance(v, str) and v for v in dg.measures.describe().values())
    assert dg.measures.get("modularity").graph and not dg.measures.get("twonn").graph
    assert not dg.measures.get("twonn").labels and dg.measures.get("nc1").labels


def test_builtin_layer_measures_equal_their_pure_functions():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = torch.randn(120, 10, generator=g) + 3 * torch.eye(10)[y]
    graph = dg.GraphSpec().build(x, y)
    get = dg.measures.get
    q = dg.modularity(graph.edge_index, y, graph.edge_weight, num_nodes=120)
    assert abs(get("modularity").fn(x, y, graph) - q) < 1e-12
    assert get("twonn").fn(x, y, None) == dg.measures.twonn(x)
    assert get("pca_dim").fn(x, y, None) == dg.measures.pca_dim(x)
    assert get("nc1").fn(x, y, None) == dg.measures.neural_collapse(x, y)["nc1"]
    assert get("knn_purity").fn(x, y, None, k=5) == dg.measures.knn_purity(x, y, k=5)
    with pytest.raises(ValueError, match="needs the layer's kNN graph"):
        get("modularity").fn(x, y, None)
    with pytest.raises(ValueError, match="needs the classifier"):
        get("nc3").fn(x, y, None)


def test_user_measure_in_depth_profile_and_errors():
    @dg.measures.register("test_mean_norm", graph=False, labels=False)
    def mean_norm(x, y, graph):
        """Mean row norm."""
        return x.norm(dim=1).mean()
    try:
        f = {"a": torch.ones(10, 4), "b": 3 * torch.ones(10, 4)}
        p = dg.depth_profile(f, ["test_mean_norm"], y=torch.arange(10) % 2, progress=False)
        assert p["test_mean_norm"].values.tolist() == [2.0, 6.0]
        assert dg.measures.describe()["test_mean_norm"] == "Mean row norm."
        with pytest.raises(ValueError, match="already registered"):
            dg.measures.register("test_mean_norm")(mean_norm)
        with pytest.raises(ValueError, match="reads the labels"):
            dg.depth_profile(f, ["test_mean_norm"], y=torch.arange(10) % 2,
                             null_permutations=5, progress=False)
    finally:
        dg.measures.unregister("test_mean_norm")
    assert "test_mean_norm" not in dg.measures.available()

    @dg.measures.register("test_two", graph=False, outputs=("lo", "hi"))
    def two(x, y, graph):
        return {"lo": float(x.min()), "hi": float(x.max())}
    try:
        p = dg.depth_profile({"a": torch.arange(8.0).reshape(4, 2)}, "test_two",
                             y=torch.tensor([0, 0, 1, 1]), progress=False)
        assert p.metrics == ["lo", "hi"] and p.mean[0].tolist() == [0.0, 7.0]
    finally:
        dg.measures.unregister("test_two")


def test_register_and_get_errors():
    with pytest.raises(ValueError, match="unknown measure 'modularty'.*modularity"):
        dg.measures.get("modularty")
    with pytest.raises(ValueError, match="is a pair measure"):
        dg.depth_profile({"a": torch.randn(8, 2)}, ["cka"], y=torch.arange(8) % 2)
    with pytest.raises(ValueError, match="without ':'"):
        dg.measures.register("a:b")
    with pytest.raises(ValueError, match="reserved"):
        dg.measures.register("samples")
    with pytest.raises(ValueError, match="kind"):
        dg.measures.register("x_kind", kind="triple")
    with pytest.raises(TypeError, match="graph must be True or False"):
        dg.measures.register("x_flag", graph="yes")
    with pytest.raises(ValueError, match="twice"):
        _registry.resolve(["twonn", "twonn"], "layer")
    with pytest.raises(ValueError, match="empty"):
        _registry.resolve([], "layer")
    with pytest.raises(TypeError, match="measure names are strings"):
        dg.measures.get(3)

"""The built-in measures of the registry. Each is a thin adapter over the pure function that is
the single source of truth (``dg.measures.modularity``, ``twonn``, ``neural_collapse``, ...)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from torch import Tensor
from torch_geometric.data import Data

from ._collapse import neural_collapse
from ._community import graph_purity, knn_purity
from ._dimension import mle_id, participation_ratio, pca_dim, twonn
from ._modularity import community_contributions
from ._registry import register
from ._similarity import RepresentationSummary, summary_similarity


def _graph(graph: Optional[Data], name: str) -> Data:
    if graph is None:
        raise ValueError(f"measure {name!r} needs the layer's kNN graph; it got graph=None")
    return graph


# ---------------------------------------------------------------------------- graph measures
@register("modularity", graph=True, description="Newman modularity Q of the kNN graph, the "
          "classes as communities (Lu et al. 2022)")
def _modularity(x: Tensor, y: Tensor, graph: Optional[Data], resolution: float = 1.0) -> float:
    g = _graph(graph, "modularity")
    # The sum of the community terms: the arithmetic of DynamicGraph.modularity, bit for bit.
    return float(community_contributions(g.edge_index, y, g.edge_weight, num_nodes=g.num_nodes,
                                         resolution=resolution).sum())


@register("graph_purity", graph=True, description="share of each node's kNN-graph weight that "
          "comes from its own class")
def _graph_purity(x: Tensor, y: Tensor, graph: Optional[Data]) -> float:
    g = _graph(graph, "graph_purity")
    return float(graph_purity(g.edge_index, y, g.edge_weight, num_nodes=g.num_nodes))


@register("knn_purity", graph=False, description="share of each sample's k nearest neighbours "
          "(k = 10) with its label")
def _knn_purity(x: Tensor, y: Tensor, graph: Optional[Data], k: int = 10,
                metric: str = "cosine") -> float:
    return float(knn_purity(x, y, k=k, metric=metric))


# ---------------------------------------------------------------------------- intrinsic dimension
@register("twonn", graph=False, labels=False, description="TwoNN intrinsic dimension "
          "(Facco et al. 2017)")
def _twonn(x: Tensor, y: Tensor, graph: Optional[Data], **kw: Any) -> float:
    return float(twonn(x, **kw))  # type: ignore[arg-type]


@register("mle_id", graph=False, labels=False, description="Levina-Bickel MLE intrinsic "
          "dimension (k = 20)")
def _mle_id(x: Tensor, y: Tensor, graph: Optional[Data], **kw: Any) -> float:
    return float(mle_id(x, **kw))  # type: ignore[arg-type]


@register("participation_ratio", graph=False, labels=False, description="participation ratio "
          "(Σλ)²/Σλ² of the covariance spectrum")
def _pr(x: Tensor, y: Tensor, graph: Optional[Data], bias_correction: bool = False) -> float:
    return float(participation_ratio(x, bias_correction=bias_correction))


@register("pca_dim", graph=False, labels=False, description="principal components explaining "
          "90% of the variance")
def _pca(x: Tensor, y: Tensor, graph: Optional[Data], threshold: float = 0.9) -> float:
    return float(pca_dim(x, threshold=threshold))


# ---------------------------------------------------------------------------- neural collapse
_NC_KEYS = ("nc1", "nc1_trace", "nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf",
            "cdnv", "ncc_accuracy")
_NC_W_KEYS = ("nc3", "nc4")
_last: Dict[str, Any] = {}


def _collapse(x: Tensor, y: Tensor, classifier: Any = None, **kw: Any) -> Dict[str, Any]:
    """neural_collapse of one layer, reused by the NC measures of the same call."""
    key: Tuple[Any, ...] = (id(x), x._version, id(y), y._version, id(classifier),
                            tuple(sorted(kw.items())))
    if _last.get("key") != key or _last.get("x") is not x or _last.get("y") is not y:
        _last.clear()
        _last.update(key=key, x=x, y=y, value=neural_collapse(x, y, classifier, **kw))
    return _last["value"]


def _nc_measure(metric: str) -> None:
    needs_w = metric in _NC_W_KEYS

    def fn(x: Tensor, y: Tensor, graph: Optional[Data], classifier: Any = None,
           **kw: Any) -> float:
        if needs_w and classifier is None:
            raise ValueError(f"measure {metric!r} needs the classifier: pass "
                             f"measure_options={{{metric!r}: {{'classifier': model.fc}}}}")
        return float(_collapse(x, y, classifier, **kw)[metric])
    fn.__name__ = f"_{metric}"
    register(metric, graph=False, description=f"neural collapse {metric} (Papyan et al. 2020; "
             f"see dg.measures.neural_collapse)")(fn)


for _m in _NC_KEYS + _NC_W_KEYS:
    _nc_measure(_m)


# ---------------------------------------------------------------------------- pair measures
def _pair(measure: str, description: str, distance: bool = False, labels: bool = False) -> None:
    def prepare(x: Tensor, y: Optional[Tensor], **kw: Any) -> RepresentationSummary:
        return RepresentationSummary(x, [measure], labels=y if labels else None, **kw)

    def fn(a: RepresentationSummary, b: RepresentationSummary) -> float:
        return summary_similarity(a, b, measure)
    register(measure, kind="pair", prepare=prepare, distance=distance, labels=labels,
             description=description)(fn)


_pair("cka", "linear CKA, biased HSIC (Kornblith et al. 2019)")
_pair("cka_unbiased", "linear CKA, unbiased HSIC (Song et al. 2012)")
_pair("mutual_knn", "mutual kNN alignment (Huh et al. 2024), k = 10")
_pair("knn_overlap", "mean Jaccard index of the kNN sets, k = 10")
_pair("graph", "graph-based similarity: mean row cosine of the kNN adjacencies")
_pair("modularity_distance", "|Q_a − Q_b| of the reference snapshots (Lu et al. 2022)",
      distance=True, labels=True)

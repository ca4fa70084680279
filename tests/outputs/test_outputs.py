"""plot() and log(): one entry point each; the user's matplotlib state is never touched."""
import sys

import pytest
import torch

import dyngraph as dg


def profile(with_null=True):
    s = torch.tensor([[[0.20, 0.0, 0.01, 20.0], [0.50, 0.0, 0.01, 50.0]],
                      [[0.22, 0.0, 0.01, 22.0], [0.52, 0.0, 0.01, 52.0]]], dtype=torch.float64)
    metrics = ["modularity", "modularity:null_mean", "modularity:null_std", "modularity:z"]
    if not with_null:
        s, metrics = s[:, :, :1], metrics[:1]
    return dg.DepthProfile(["conv1", "conv2"], metrics, s, {"k": 3})


def test_plot_profile_saves_png_and_does_not_switch_backend(tmp_path):
    import matplotlib
    before = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig = dg.plot(profile(), tmp_path / "p.png", title="t")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert matplotlib.get_backend() == before
    # dyngraph's own figures are not registered with pyplot (nothing to close, nothing leaks)
    if had_pyplot:
        import matplotlib.pyplot as plt
        assert fig.number not in plt.get_fignums() if hasattr(fig, "number") else True
    else:
        assert "matplotlib.pyplot" not in sys.modules
    ax = fig.axes[0]
    assert ax.get_ylabel() == "modularity" and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["conv1", "conv2"]
    # the null is drawn as a band and named in the legend
    assert any("chance" in t.get_text() for t in ax.get_legend().get_texts())


def test_plot_overlay_matrix_and_errors(tmp_path):
    a, b = profile(False), profile(False)
    fig = dg.plot([a, b], labels=["trained", "untrained"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["trained",
                                                                            "untrained"]
    m = dg.LayerMatrix(["a", "b"], ["a", "b"], "cka", torch.eye(2, dtype=torch.float64))
    assert len(dg.plot(m, tmp_path / "m.png").axes) == 2  # heatmap + colorbar
    with pytest.raises(TypeError, match="does not know how to draw a str"):
        dg.plot("curve")
    with pytest.raises(TypeError, match="of one type"):
        dg.plot([a, m])
    with pytest.raises(ValueError, match="labels has 1 entries for 2 profiles"):
        dg.plot([a, b], labels=["x"])
    assert {"DepthProfile", "LayerMatrix"} <= set(dg.outputs.drawable_types())


def test_log_convention(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, profile(), prefix="run")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"run/modularity", "run/modularity_std", "run/modularity:z"} <= set(scalars)
    ev = acc.Scalars("run/modularity")
    assert [e.step for e in ev] == [0, 1]
    assert [round(e.value, 4) for e in ev] == [0.21, 0.51]
    assert "run/layers/text_summary" in acc.Tags()["tensors"]
    assert "run/figure" in acc.Tags()["images"]
    with pytest.raises(TypeError, match="SummaryWriter-like"):
        dg.log(object(), profile())
    with pytest.raises(ValueError, match="prefix"):
        dg.log(SummaryWriter(str(tmp_path / "b")), profile(), prefix="")


def test_matrix_marks_significant_cells_and_labels():
    v = torch.tensor([[[0.9, 0.01], [0.2, 0.5]], [[0.1, 0.5], [0.8, 0.02]]], dtype=torch.float64)
    m = dg.LayerMatrix(["a1", "a2"], ["b1", "b2"], ["cka", "cka:p"], v,
                       {"models": ["A", "B"], "distance": {"cka": False}})
    fig = dg.plot(m)
    texts = sorted(t.get_text() for t in fig.axes[0].texts)
    assert texts == ["0.10", "0.20", "0.80*", "0.90*"]
    assert fig.axes[0].get_ylabel() == "layers of A" and fig.axes[1].get_ylabel() == "cka"


def test_nineteen_permutations_can_mark_a_cell():
    """With P = 19 the smallest p is 1/20 = 0.05: a permutation test at 0.05 rejects p <= 0.05,
    so a model compared with itself is marked (0.1 tested p < 0.05 and never could)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    m = dg.layer_matrix({"a": x}, {"a": x}, ["cka"], permutations=19)
    assert float(m["cka:p"][0, 0]) == pytest.approx(0.05)
    assert [t.get_text() for t in dg.plot(m).axes[0].texts] == ["1.00*"]

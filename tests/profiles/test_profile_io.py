"""DepthProfile I/O and outputs: the 0.1 Curve tests, ported to the one result type."""
import csv
import io
import json

import numpy as np
import pytest
import torch

import dyngraph as dg


def read_scalars(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_from_samples_stats_and_access():
    s = torch.tensor([[0.1, 0.4, 0.5], [0.3, 0.2, 0.7]])
    c = dg.DepthProfile(["a", "b", "c"], ["modularity"], s, meta={"k": 3})
    assert np.allclose(c.values.numpy(), s.double().mean(0).numpy())
    assert np.allclose(c.errors.numpy(), np.std(s.double().numpy(), axis=0, ddof=1))
    assert c.layer("b")["modularity"] == pytest.approx(0.3)
    assert c.layer(2)["modularity"] == pytest.approx(0.6)
    assert np.allclose(c.diff().numpy(), [0.1, 0.3])
    assert c.layers[int(c.values.argmax())] == "c" and "repeats=2" in repr(c) and len(c) == 3
    with pytest.raises(ValueError, match=r"\[repeats, 1 layers, 1 metrics\]"):
        dg.DepthProfile(["a"], ["modularity"], torch.tensor([[[1.0, 2.0]]]))


def test_json_csv_roundtrip(tmp_path):
    c = dg.DepthProfile(["l0", "l1"], ["modularity"], torch.tensor([[0.2, 0.5], [0.4, 0.9]]),
                        meta={"k": 3, "metric": "cosine", "seed": 0})
    c.to_json(tmp_path / "c.json")
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["layers"] == ["l0", "l1"] and np.allclose(d["modularity"], [0.3, 0.7])
    back = dg.DepthProfile.from_json(tmp_path / "c.json")
    assert torch.equal(back.values, c.values) and back.meta["k"] == 3 and back == c
    rows = list(csv.reader(io.StringIO(c.to_csv(tmp_path / "c.csv"))))
    assert rows[0][:5] == ["layer_index", "layer", "metric", "mean", "std"]
    assert float(rows[2][3]) == pytest.approx(0.7) and len(rows) == 3
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_tensorboard_one_scalar_per_layer_and_figure(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    c = dg.DepthProfile(["a", "b", "c"], ["modularity"],
                        torch.tensor([[0.1, 0.4, 0.8], [0.2, 0.5, 0.9]]))
    with SummaryWriter(str(tmp_path)) as w:
        dg.log(w, c)
    acc = read_scalars(tmp_path)
    events = acc.Scalars("dyngraph/modularity")
    assert [e.step for e in events] == [0, 1, 2]
    assert np.allclose([e.value for e in events], c.values.numpy(), atol=1e-6)
    assert len(acc.Scalars("dyngraph/modularity_std")) == 3
    assert "dyngraph/figure" in acc.Tags()["images"]
    with pytest.raises(TypeError, match="writer"):
        dg.log(object(), c)


def test_plot_png(tmp_path):
    c = dg.DepthProfile(["a", "b"], ["modularity"], torch.tensor([0.1, 0.3]))
    fig = dg.plot(c, tmp_path / "c.png", labels=["trained"])
    assert (tmp_path / "c.png").stat().st_size > 1000 and fig is not None
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

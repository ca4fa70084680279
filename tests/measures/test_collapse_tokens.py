"""Neural collapse of token sequences and of arbitrary label values (issue 15).

* Streaming with ``pool='tokens'``: every token row carries its input's label, so the streamed
  metrics equal those of the features ``extract_features(..., pool='tokens')`` returns, and a
  numpy reference on those rows.
* Label values are class ids, not sizes: ``{0, 1, 10**9}`` runs in bounded memory and gives the
  result of ``{0, 1, 2}`` in every collapse entry point (in memory, streamed, class means,
  minority collapse, the registered measures)."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dyngraph as dg
from tests._padding import pad_batch

scipy_linalg = pytest.importorskip("scipy.sparse.linalg")
from scipy.spatial.distance import cdist  # noqa: E402

BIG = 10 ** 9


def np_nc(X, y):
    """NC1, NC1-trace, CDNV and NCC accuracy of Papyan et al. in numpy (labels 0..C-1)."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    C = int(y.max()) + 1
    mu = np.stack([X[y == c].mean(0) for c in range(C)])
    Mt = mu - X.mean(0)
    Sw = sum((X[y == c] - mu[c]).T @ (X[y == c] - mu[c]) for c in range(C)) / X.shape[0]
    Sb = Mt.T @ Mt / C
    vals, vecs = scipy_linalg.eigsh(Sb, k=C - 1)
    n = np.array([(y == c).sum() for c in range(C)])
    var = np.array([((X[y == c] - mu[c]) ** 2).sum() / n[c] for c in range(C)])
    cd = [(var[i] + var[j]) / (2 * np.sum((mu[i] - mu[j]) ** 2))
          for i in range(C) for j in range(i + 1, C)]
    return {"nc1": np.trace(Sw @ vecs @ np.diag(1 / vals) @ vecs.T) / C,
            "nc1_trace": np.trace(Sw) / np.trace(Sb), "cdnv": np.mean(cd),
            "ncc_accuracy": (cdist(X, mu).argmin(1) == y).mean()}


class Encoder(nn.Module):
    """Embedding and two batch-first transformer layers that ignore the padded keys."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(30, 8)
        self.blocks = nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0,
                                                                batch_first=True)
                                     for _ in range(2)])

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids)
        for block in self.blocks:
            h = block(h, src_key_padding_mask=attention_mask == 0)
        return h


LAYERS = ["emb", "blocks.0", "blocks.1"]


class Sentences(Dataset):
    """Token-id sequences of 2 to 8 tokens; class ``c`` draws its tokens mostly from its own
    third of the vocabulary. ``.labels`` exposes the labels (``values[c]`` for class ``c``)."""

    def __init__(self, n=36, values=(0, 1, 2), seed=0):
        g = torch.Generator().manual_seed(seed)
        self.classes = [i % 3 for i in range(n)]
        self.labels = torch.tensor([values[c] for c in self.classes])
        lengths = torch.randint(2, 9, (n,), generator=g).tolist()
        self.seqs = [torch.where(torch.rand(t, generator=g) < 0.8,
                                 1 + 10 * c + torch.randint(0, 9, (t,), generator=g),
                                 torch.randint(1, 30, (t,), generator=g))
                     for c, t in zip(self.classes, lengths)]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], int(self.labels[i])


def collate(items):
    """A Hugging Face-style dict batch padded to its longest sequence."""
    return pad_batch(items)


def loader_of(values=(0, 1, 2)):
    return DataLoader(Sentences(values=values), batch_size=8, collate_fn=collate)


def same(got, ref, rel=1e-6, abs_=1e-9):
    """Every metric both have agrees (a one-pass stream has no NCC accuracy)."""
    assert {"nc1", "nc1_trace", "cdnv"} <= set(got) & set(ref)
    for k in set(got) & set(ref):
        assert got[k] == pytest.approx(float(ref[k]), rel=rel, abs=abs_), (k, got[k], ref[k])


# ---------------------------------------------------------------------------- tokens
def test_streamed_collapse_of_every_token_equals_extracted_tokens():
    model, loader = Encoder().eval(), loader_of()
    ds = loader.dataset
    feats = dg.extract_features(model, loader, LAYERS, pool="tokens", progress=False)
    # each token row carries its input's label (independently: the sequence lengths)
    assert feats.y.tolist() == [c for c, s in zip(ds.classes, ds.seqs) for _ in range(len(s))]
    ref = dg.measures.neural_collapse(feats)
    for method in ("subspace", "full"):
        got = dg.measures.neural_collapse_model(model, loader, LAYERS, classifier=None,
                                                pool="tokens", method=method, progress=False)
        assert list(got) == LAYERS
        for layer in LAYERS:
            assert got[layer]["n_samples"] == feats.n_samples == sum(len(s) for s in ds.seqs)
            same(got[layer], ref[layer])
            same(got[layer], np_nc(feats[layer], feats.y), rel=1e-5)
    # the callback, epoch by epoch, reads the same rows
    cb = dg.measures.CollapseCallback(loader, LAYERS, classifier=None, pool="tokens",
                                      on_error="raise")
    prof = cb(model, epoch=0)
    assert prof["nc1"].values.tolist() == pytest.approx([ref[n]["nc1"] for n in LAYERS],
                                                        rel=1e-6)
    # pooled per input: the mean of its real tokens, as extract_features pools it
    pooled = dg.extract_features(model, loader, LAYERS, pool="mean", progress=False)
    got = dg.measures.neural_collapse_model(model, loader, LAYERS, classifier=None,
                                            pool="mean", progress=False)
    same(got["blocks.1"], dg.measures.neural_collapse(pooled)["blocks.1"])


def test_token_collapse_errors_name_the_argument():
    model, loader = Encoder().eval(), loader_of()
    with pytest.raises(ValueError, match="pool must be.*got 'token'"):
        dg.measures.CollapseCallback(loader, LAYERS, classifier=None, pool="token")
    with pytest.raises(ValueError, match="layout must be.*got 'rows'"):
        dg.measures.CollapseCallback(loader, LAYERS, classifier=None, pool="tokens",
                                     layout="rows")
    with pytest.raises(ValueError, match="pool=None would flatten the padding"):
        dg.measures.neural_collapse_model(model, loader, LAYERS, classifier=None,
                                          progress=False)
    batches = [{**b, "labels": b["labels"].float()} for b in loader]
    with pytest.raises(TypeError, match="labels must hold integer class labels"):
        dg.measures.neural_collapse_model(model, batches, LAYERS, classifier=None,
                                          num_classes=3, pool="tokens", progress=False)


# ---------------------------------------------------------------------------- label values
def test_label_values_are_ids_in_memory():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(90, 8, generator=g) + 3 * torch.randn(3, 8, generator=g)[y]
    big = torch.tensor([0, 1, BIG])[y]
    ref = dg.measures.neural_collapse(x, y)
    got = dg.measures.neural_collapse(x, big)
    assert got == ref and got["num_classes"] == 3
    same(got, np_nc(x, y))
    # classifier row c is the c-th smallest label
    w = torch.randn(3, 8, generator=g)
    assert dg.measures.neural_collapse(x, big, w) == dg.measures.neural_collapse(x, y, w)
    means, counts = dg.measures.class_means(x, big)
    ref_means, ref_counts = dg.measures.class_means(x, y)
    assert torch.equal(means, ref_means) and torch.equal(counts, ref_counts)
    assert means.shape == (3, 8)
    # with num_classes the labels are rows of [0, C)
    with pytest.raises(ValueError, match="labels must be < num_classes=3, got max\\(labels\\)="
                                         "1000000000"):
        dg.measures.neural_collapse(x, big, num_classes=3)
    # the registered measures and collapse_curves (per_class resampling included)
    f = {"a": x, "b": 2 * x}
    for kw in ({}, {"per_class": 20, "repeats": 2}):
        p_ref = dg.depth_profile(f, ["nc1", "cdnv"], y=y, progress=False, **kw)
        p_big = dg.depth_profile(f, ["nc1", "cdnv"], y=big, progress=False, **kw)
        assert torch.equal(p_big.samples, p_ref.samples)
    c_ref = dg.measures.collapse_curves(f, y)
    c_big = dg.measures.collapse_curves(f, big)
    assert torch.equal(c_big.samples, c_ref.samples)


def test_label_values_are_ids_when_streamed():
    model = Encoder().eval()
    ref = dg.measures.neural_collapse_model(model, loader_of(), LAYERS, classifier=None,
                                            pool="tokens", progress=False)
    big = loader_of((0, 1, BIG))
    assert big.dataset.labels.max() == BIG
    got = dg.measures.neural_collapse_model(model, big, LAYERS, classifier=None,
                                            pool="tokens", progress=False)
    for layer in LAYERS:
        assert got[layer] == ref[layer]
    # a batch label that the dataset does not have
    batches = list(big)
    batches[1]["labels"][0] = 7

    class Listed(list):
        dataset = big.dataset

    with pytest.raises(ValueError, match="label 7, which is not among the 3 labels"):
        dg.measures.neural_collapse_model(model, Listed(batches), LAYERS, classifier=None,
                                          pool="tokens", progress=False)


def test_minority_collapse_with_label_values():
    g = torch.Generator().manual_seed(1)
    y = torch.arange(120) % 6
    x = torch.randn(120, 5, generator=g, dtype=torch.float64) + 2 * torch.randn(
        6, 5, generator=g, dtype=torch.float64)[y]
    values = torch.tensor([3, 8, 20, 400, 5000, BIG])
    ref = dg.measures.minority_collapse(None, x, y, minority=[3, 4, 5])
    assert dg.measures.minority_collapse(None, x, values[y], minority=[400, 5000, BIG]) == ref
    assert dg.measures.minority_collapse(None, x, values[y], n_majority=3) == ref
    with pytest.raises(ValueError, match="minority must hold labels of the data.*got \\[4\\]"):
        dg.measures.minority_collapse(None, x, values[y], minority=[4])

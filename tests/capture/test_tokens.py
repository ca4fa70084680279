"""Token-aware capture: pools of token sequences and channels-last maps, the attention mask, dict
batches padded per batch, every token as a sample, and the errors of pools that do not fit.

The references are independent of the pooling code: each sequence run alone without padding,
and per-sample Python loops over its real tokens."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import dyngraph as dg
from dyngraph.capture._taps import module_input_layout, module_layout, split_batch


class TinyEncoder(nn.Module):
    """Embedding + two batch-first transformer layers that ignore padded keys."""

    def __init__(self, vocab=20, hidden=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(
            [nn.TransformerEncoderLayer(hidden, 2, 16, dropout=0.0, batch_first=True)
             for _ in range(2)])

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        pad = None if attention_mask is None else attention_mask == 0
        for block in self.blocks:
            h = block(h, src_key_padding_mask=pad)
        return h


LAYERS = ["emb", "blocks.0", "blocks.1"]


def encoder():
    torch.manual_seed(0)
    return TinyEncoder().eval()


def alone(model, ids):
    """Hidden states of one unpadded sequence ``[T]`` at every layer, by hand: ``[T, H]`` each."""
    with torch.no_grad():
        h = model.emb(ids[None])
        out = [h[0]]
        for block in model.blocks:
            h = block(h)
            out.append(h[0])
    return out


def pad(seqs, left=False):
    T = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if left else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


def sequences(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (n,), generator=g).tolist()
    return [torch.randint(1, 20, (t,), generator=g) for t in lengths]


class SeqData(Dataset):
    def __init__(self, seqs, labels):
        self.seqs, self.labels = seqs, torch.as_tensor(labels)

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], int(self.labels[i])


def collate(items):  # pads each batch to its own longest sequence, as HF collators do
    ids, mask = pad([s for s, _ in items])
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([y for _, y in items])}


# ---------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("left", [False, True])
def test_token_pools_equal_pooling_of_each_sequence_alone(left):
    m = encoder()
    seqs = sequences(6)
    ids, mask = pad(seqs, left=left)
    refs = [alone(m, s) for s in seqs]  # [layer][T, H] per sequence, no padding at all
    for pool in ("mean", "cls", "last"):
        with dg.LayerTaps(m, LAYERS, pool=pool) as taps:
            out = taps({"input_ids": ids, "attention_mask": mask})
        for li, name in enumerate(LAYERS):
            for i, r in enumerate(refs):
                want = {"mean": r[li].mean(0), "cls": r[li][0], "last": r[li][-1]}[pool]
                torch.testing.assert_close(out[name][i], want, atol=1e-5, rtol=0)
    with dg.LayerTaps(m, LAYERS, pool="tokens") as taps:
        out = taps({"input_ids": ids, "attention_mask": mask})
    rows, pos = taps.tokens
    want_rows = [i for i, s in enumerate(seqs) for _ in range(len(s))]
    offset = [ids.shape[1] - len(s) if left else 0 for s in seqs]
    want_pos = [offset[i] + t for i, s in enumerate(seqs) for t in range(len(s))]
    assert rows.tolist() == want_rows and pos.tolist() == want_pos
    for li, name in enumerate(LAYERS):
        torch.testing.assert_close(out[name], torch.cat([r[li] for r in refs]), atol=1e-5,
                                   rtol=0)


def test_the_mask_is_found_positionally_in_a_dict_and_without_a_mask_every_token_counts():
    m = encoder()
    seqs = sequences(4, seed=1)
    ids, mask = pad(seqs)
    with dg.LayerTaps(m, ["blocks.1"], pool="mean") as taps:
        by_kw = taps({"input_ids": ids, "attention_mask": mask})["blocks.1"]
        by_pos = taps((ids, mask))["blocks.1"]        # model(ids, mask): bound by its signature
        assert torch.equal(taps.attention_mask, mask)

    class DictModel(nn.Module):                          # forward(batch) takes the whole dict
        def __init__(self):
            super().__init__()
            self.inner = m

        def forward(self, batch):
            return self.inner(batch["input_ids"], batch["attention_mask"])
    with dg.LayerTaps(DictModel(), ["inner.blocks.1"], pool="mean") as taps:
        in_dict = taps(({"input_ids": ids, "attention_mask": mask},))["inner.blocks.1"]
    torch.testing.assert_close(by_pos, by_kw, atol=0, rtol=0)
    torch.testing.assert_close(in_dict, by_kw, atol=0, rtol=0)
    full = torch.randint(1, 20, (3, 5))
    with dg.LayerTaps(m, ["emb"], pool="mean") as taps:
        out = taps({"input_ids": full})["emb"]
    torch.testing.assert_close(out, m.emb(full).mean(1), atol=1e-6, rtol=0)


def test_block_outputs_that_are_tuples_or_model_outputs_give_their_hidden_state():
    class TupleBlock(nn.Module):      # (hidden, attention weights), like older HF blocks
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, h, pad):
            out, w = self.attn(h, h, h, key_padding_mask=pad)
            return out, w

    class OutputBlock(nn.Module):     # a ModelOutput-like OrderedDict, hidden state not first
        def forward(self, h):
            return OrderedDict(attentions=h.sum(-1), last_hidden_state=h * 2)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.a, self.b = nn.Embedding(20, 8), TupleBlock(), OutputBlock()

        def forward(self, input_ids, attention_mask):
            h = self.a(self.emb(input_ids), attention_mask == 0)[0]
            return self.b(h)["last_hidden_state"]
    torch.manual_seed(0)
    net = Net().eval()
    ids, mask = pad(sequences(5, seed=2))
    with dg.LayerTaps(net, ["a", "b"], pool="mean") as taps:
        out = taps({"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        h = net.a(net.emb(ids), mask == 0)[0]
    for i, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(out["a"][i], h[i, :n].mean(0), atol=1e-6, rtol=0)
        torch.testing.assert_close(out["b"][i], 2 * h[i, :n].mean(0), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- extraction
def test_extract_features_on_dict_batches_padded_per_batch():
    m = encoder()
    seqs = sequences(24, seed=3)
    ds = SeqData(seqs, torch.arange(24) % 3)
    loader = DataLoader(ds, batch_size=5, collate_fn=collate)   # batches of different lengths
    lengths = {b["input_ids"].shape[1] for b in loader}
    assert len(lengths) > 1
    f = dg.extract_features(m, loader, LAYERS, pool="mean", per_class=4, seed=1, progress=False)
    assert f.n_samples == 12 and f.y.bincount().tolist() == [4, 4, 4]
    assert f.dims == {n: 8 for n in LAYERS}
    for row, i in enumerate(f.indices.tolist()):       # dataset indices, drawn up front
        assert int(f.y[row]) == i % 3
        ref = alone(m, seqs[i])
        for li, n in enumerate(LAYERS):
            torch.testing.assert_close(f[n][row], ref[li].mean(0), atol=1e-5, rtol=0)
    # a loader without exposed labels streams: the same features for the same inputs
    plain = [collate([ds[i] for i in range(s, min(s + 5, 24))]) for s in range(0, 24, 5)]
    g = dg.extract_features(m, plain, LAYERS, pool="last", progress=False)
    assert g.n_samples == 24 and g.indices is None
    for i, s in enumerate(seqs):
        torch.testing.assert_close(g["blocks.1"][i], alone(m, s)[2][-1], atol=1e-5, rtol=0)


def test_every_token_a_sample_with_its_input_position_and_a_seeded_balanced_draw(tmp_path):
    m = encoder()
    seqs = sequences(18, seed=4)
    ds = SeqData(seqs, torch.arange(18) % 3)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate)
    f = dg.extract_features(m, loader, LAYERS, pool="tokens", progress=False)
    assert f.n_samples == sum(len(s) for s in seqs)
    assert f.indices.tolist() == [i for i, s in enumerate(seqs) for _ in range(len(s))]
    assert f.positions.tolist() == [t for s in seqs for t in range(len(s))]
    assert f.y.tolist() == [i % 3 for i, s in enumerate(seqs) for _ in range(len(s))]
    assert f.meta["indices"] == "dataset" and f.meta["n_inputs"] == 18
    for row in (0, 7, f.n_samples - 1):                # a token is its own hidden state
        i, t = int(f.indices[row]), int(f.positions[row])
        torch.testing.assert_close(f["blocks.1"][row], alone(m, seqs[i])[2][t], atol=1e-5,
                                   rtol=0)
    d = dg.extract_features(m, loader, LAYERS, pool="tokens", tokens_per_class=10, seed=5,
                            progress=False)
    assert d.y.bincount().tolist() == [10, 10, 10]
    key = {(i, t): r for r, (i, t) in enumerate(zip(f.indices.tolist(), f.positions.tolist()))}
    rows = [key[(i, t)] for i, t in zip(d.indices.tolist(), d.positions.tolist())]
    assert len(set(rows)) == 30
    for n in LAYERS:
        assert torch.equal(d[n], f[n][rows])
    again = dg.extract_features(m, loader, LAYERS, pool="tokens", tokens_per_class=10, seed=5,
                                progress=False)
    other = dg.extract_features(m, loader, LAYERS, pool="tokens", tokens_per_class=10, seed=6,
                                progress=False)
    assert torch.equal(again.positions, d.positions) and torch.equal(again.indices, d.indices)
    assert not (torch.equal(other.positions, d.positions)
                and torch.equal(other.indices, d.indices))
    spilled = dg.extract_features(m, loader, LAYERS, pool="tokens", tokens_per_class=10, seed=5,
                                  spill_dir=str(tmp_path), progress=False)
    assert spilled.on_disk
    for n in LAYERS:
        assert torch.equal(spilled[n], d[n])
    folder = spilled.meta["spill_dir"]
    import os
    assert sorted(n for n in os.listdir(folder) if n.endswith(".bin")) == \
        [f"layer_{i:03d}_tokens.bin" for i in range(3)]          # the full layers are removed
    with pytest.raises(ValueError, match="class 0 has only"):
        dg.extract_features(m, loader, LAYERS, pool="tokens", tokens_per_class=10_000,
                            progress=False)
    with pytest.raises(ValueError, match="tokens_per_class=5 draws tokens.*pool='mean'"):
        dg.extract_features(m, loader, LAYERS, pool="mean", tokens_per_class=5, progress=False)


def test_unpooled_inputs_of_different_lengths_are_a_named_error():
    class Plain(nn.Module):           # no attention mask: nothing says these are tokens
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 3)

        def forward(self, x):
            return self.lin(x.unsqueeze(-1).float())
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])), (torch.randn(2, 6), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="'lin' gave 18 features in this batch but 12.*pool"):
        dg.extract_features(Plain(), batches, ["lin"], progress=False)
    f = dg.extract_features(Plain(), batches, ["lin"], pool="mean", progress=False)
    assert f.dims == {"lin": 3}


def test_channels_last_maps():
    from torchvision.ops.misc import Permute

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 2, 2), Permute([0, 2, 3, 1]), nn.LayerNorm(6),
                        nn.Linear(6, 5))
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        maps = [net[:i + 1](x) for i in range(4)]     # [4, 6, 4, 4], then [4, 4, 4, C]
    with dg.LayerTaps(net, ["1", "2"], pool="mean") as taps:
        out = taps(x)
    torch.testing.assert_close(out["1"], maps[1].mean((1, 2)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["2"], maps[2].mean((1, 2)), atol=1e-6, rtol=0)
    with dg.LayerTaps(net, ["2"], pool="tokens") as taps:
        out = taps(x)
    assert out["2"].shape == (4 * 16, 6) and taps.tokens[1].tolist()[:17] == list(range(16)) + [0]
    torch.testing.assert_close(out["2"], maps[2].reshape(64, 6), atol=0, rtol=0)
    # nn.Linear on [B, H, W, C] is not known to be channels-last: layout says it
    with pytest.raises(ValueError, match="cannot tell a conv map.*layout='channels_last'"):
        with dg.LayerTaps(net, ["3"], pool="mean") as taps:
            taps(x)
    with dg.LayerTaps(net, ["3"], pool="mean", layout="channels_last") as taps:
        torch.testing.assert_close(taps(x)["3"], maps[3].mean((1, 2)), atol=1e-6, rtol=0)
    for pool, match in (("avg", "average the hidden units.*'mean'"),
                        ("cls", "no class or last token")):
        with pytest.raises(ValueError, match=match):
            with dg.LayerTaps(net, ["2"], pool=pool) as taps:
                taps(x)
    with pytest.raises(ValueError, match="pool='mean' pools token sequences.*'0' \\(Conv2d\\)"):
        with dg.LayerTaps(net, ["0"], pool="mean") as taps:
            taps(x)


# ---------------------------------------------------------------------------- errors
def test_pools_that_do_not_fit_the_output_raise():
    m = encoder()
    ids, mask = pad(sequences(3, seed=5))
    batch = {"input_ids": ids, "attention_mask": mask}

    def run(model, layers, pool, inputs, **kw):
        with dg.LayerTaps(model, layers, pool=pool, **kw) as taps:
            return taps(inputs)
    # 'avg' on [B, T, H]: by the module type (Embedding, transformer layer) ...
    for layer in ("emb", "blocks.0"):
        with pytest.raises(ValueError, match=f"pool='avg'.*layer '{layer}'.*token sequence.*"
                                             f"Use pool='mean'"):
            run(m, [layer], "avg", batch)
    # ... and by the attention mask for a module of unknown type (a Linear)

    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.proj = m, nn.Linear(8, 4)

        def forward(self, input_ids, attention_mask):
            return self.proj(self.enc(input_ids, attention_mask))
    for pool in ("max", 2):
        with pytest.raises(ValueError, match="'proj' \\(Linear\\).*token sequence"):
            run(WithHead(), ["proj"], pool, batch)
    with pytest.raises(ValueError, match="pool=None would flatten the padding"):
        run(m, ["blocks.1"], None, batch)
    # token pools on a conv map [B, C, L]
    conv = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU())
    for layer in ("0", "1", ""):
        with pytest.raises(ValueError, match="pool='mean' pools token sequences.*pool='avg'"):
            run(conv, [layer], "mean", torch.randn(2, 2, 9))
    got = run(conv, ["0"], "avg", torch.randn(2, 2, 9))["0"]   # CNN behaviour kept
    assert got.shape == (2, 4)
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="pool='tokens'.*shape \\(3, 3\\).*no token axis"):
        run(lin, [""], "tokens", torch.randn(3, 4))
    assert run(lin, [""], "mean", torch.randn(3, 4))[""].shape == (3, 3)  # [B, D] is kept
    # batch-first=False transformer layers return [T, B, H]
    seq_first = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    with pytest.raises(ValueError, match="batch_first=False"):
        run(seq_first, [""], "mean", torch.randn(5, 3, 8))
    # the mask itself
    bad = mask.clone()
    bad[1] = 0
    with pytest.raises(ValueError, match="attention_mask rows \\[1\\] have no tokens"):
        run(m, ["emb"], "mean", {"input_ids": ids, "attention_mask": bad})
    with pytest.raises(ValueError, match="0 \\(padding\\) and 1"):
        run(m, ["emb"], "mean", {"input_ids": ids, "attention_mask": mask * 2})
    with pytest.raises(ValueError, match="tokens are not the input's tokens"):
        run(m, ["emb"], "cls", {"input_ids": ids, "attention_mask": mask[:, :-1]})
    # option checks
    with pytest.raises(ValueError, match="pool must be .*'tokens'.*got 'median'"):
        dg.LayerTaps(m, ["emb"], pool="median")
    with pytest.raises(ValueError, match="layout must be"):
        dg.LayerTaps(m, ["emb"], pool="mean", layout="NHWC")
    with pytest.raises(ValueError, match="pool='mean'.*layout='channels_first'"):
        dg.LayerTaps(m, ["emb"], pool="mean", layout="channels_first")
    with pytest.raises(ValueError, match="pool='avg'.*layout='channels_last'"):
        dg.LayerTaps(m, ["emb"], pool="avg", layout="channels_last")


def test_tokens_of_layers_with_different_tokens_raise():
    class TwoLengths(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x)[:, 1:])
    with pytest.raises(ValueError, match="layer 'b' has 6 tokens, not the 9 tokens.*layer 'a'"):
        with dg.LayerTaps(TwoLengths(), ["a", "b"], pool="tokens") as taps:
            taps(torch.randn(3, 3, 4))


def test_module_layout_rules():
    from torchvision.ops.misc import Permute
    assert module_layout(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())) \
        == "channels_first"
    assert module_layout(nn.Sequential(nn.Conv2d(1, 2, 3), Permute([0, 2, 3, 1]),
                                       nn.LayerNorm(2))) == "channels_last"
    assert module_layout(Permute([0, 3, 1, 2])) == "channels_first"
    assert module_input_layout(Permute([0, 3, 1, 2])) == "channels_last"
    stem = nn.Sequential(nn.Conv2d(3, 4, 2, 2), Permute([0, 2, 3, 1]), nn.LayerNorm(4))
    assert (module_input_layout(stem), module_layout(stem)) == ("channels_first",
                                                                "channels_last")
    assert module_layout(nn.LayerNorm([2, 4, 4])) is None
    assert module_layout(nn.Linear(2, 2)) is None

    class Mixed(nn.Module):      # a conv net with an attention module: not decided
        def __init__(self):
            super().__init__()
            self.conv, self.attn = nn.Conv2d(1, 2, 3), nn.MultiheadAttention(2, 1)
    assert module_layout(Mixed()) is None


# ---------------------------------------------------------------------------- batches
def test_split_batch_of_hugging_face_dicts():
    ids, mask, y = torch.ones(2, 3), torch.ones(2, 3), torch.tensor([1, 0])
    inputs, labels = split_batch({"input_ids": ids, "attention_mask": mask, "labels": y})
    assert set(inputs) == {"input_ids", "attention_mask"} and labels is y
    inputs, labels = split_batch({"input_ids": ids, "label": y})
    assert set(inputs) == {"input_ids"} and labels is y
    with pytest.raises(TypeError, match="several label keys \\['label', 'labels'\\]"):
        split_batch({"input_ids": ids, "label": y, "labels": y})
    with pytest.raises(TypeError, match="batch_fn"):
        split_batch({"input_ids": ids, "attention_mask": mask})
    with pytest.raises(TypeError, match="batch_fn"):
        split_batch({"labels": y})
    keep = {"input_ids": ids, "labels": y}
    inputs, labels = split_batch(keep, lambda b: (b, b["labels"]))   # the model gets labels
    assert "labels" in inputs

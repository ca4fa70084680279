"""Transformer depth pruning: surgery against skipping the block by hand (with and without the KV
cache, and generate), the criteria against HF's own output_hidden_states, perplexity against HF's
own loss, healing and its resume, and the study end to end on a tiny model."""
import copy
import inspect
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from dyngraph.prune._transformer import (  # noqa: E402
    block_states,
    head_modules,
    heal,
    lm_batches,
    perplexity,
    remove_blocks,
    select_blocks,
    transformer_blocks,
    transformer_prune_study,
)

V = 40


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=4, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=4, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _qwen2():  # per-layer attention types in the config (full / sliding window)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=4, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64,
                                   use_sliding_window=True, sliding_window=4, max_window_layers=2,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.Qwen2ForCausalLM(cfg).eval()


MODELS = {"gpt2": _gpt2, "llama": _llama, "qwen2": _qwen2}


def _skip_by_hand(model, i):
    """A hook that makes block ``i`` return its input unchanged (in the block's output format)."""
    _, blocks = transformer_blocks(model)

    def hook(mod, args, kwargs, out):
        h = args[0] if args else kwargs.get("hidden_states", kwargs.get("src"))
        return h if isinstance(out, torch.Tensor) else (h,) + tuple(out[1:])
    return blocks[i].register_forward_hook(hook, with_kwargs=True)


def _cache_of(out):
    c = out.get("cache", None)
    return c if c is not None else out.get("past_key_values")


def _cache_kw(model):
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def _incremental_logits(model, ids, prefix):
    """The logits of ``ids`` decoded with the KV cache: the prefix at once, then one token at a
    time."""
    out = model(input_ids=ids[:, :prefix], use_cache=True)
    cache, steps = _cache_of(out), [out.logits]
    for t in range(prefix, ids.shape[1]):
        out = model(input_ids=ids[:, t:t + 1], use_cache=True, **{_cache_kw(model): cache})
        cache = _cache_of(out)
        steps.append(out.logits)
    return torch.cat(steps, 1)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("block", [0, 2])
def test_removing_a_block_equals_skipping_it_by_hand(kind, block):
    model = MODELS[kind]()
    ids = torch.randint(1, V, (2, 9), generator=torch.Generator().manual_seed(1))
    handle = _skip_by_hand(model, block)
    with torch.no_grad():
        ref = model(input_ids=ids, use_cache=False).logits
        # the reference's greedy continuation, one full forward per token
        seq = ids[:, :4]
        for _ in range(5):
            nxt = model(input_ids=seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    handle.remove()
    pruned, log = remove_blocks(model, [block], return_log=True)
    assert len(transformer_blocks(pruned)[1]) == 3 and len(transformer_blocks(model)[1]) == 4
    assert pruned.config.num_hidden_layers == 3 and model.config.num_hidden_layers == 4
    assert log["removed"] == [block]
    with torch.no_grad():
        full = pruned(input_ids=ids, use_cache=False).logits
    assert torch.allclose(full, ref, atol=1e-5), (full - ref).abs().max()
    inc = _incremental_logits(pruned, ids, prefix=5)
    assert torch.allclose(inc, ref, atol=1e-5), (inc - ref).abs().max()
    gen = pruned.generate(ids[:, :4], attention_mask=torch.ones(2, 4, dtype=torch.long),
                          max_new_tokens=5, do_sample=False)
    assert torch.equal(gen, seq)


def test_config_per_layer_lists_and_cache_indices_follow_the_kept_blocks():
    model = _qwen2()
    assert model.config.layer_types == ["full_attention", "full_attention",
                                        "sliding_attention", "sliding_attention"]
    pruned = remove_blocks(model, [1, 2])
    assert pruned.config.layer_types == ["full_attention", "sliding_attention"]
    assert [b.self_attn.layer_idx for b in pruned.model.layers] == [0, 1]
    gpt = remove_blocks(_gpt2(), ["transformer.h.0"])
    assert gpt.config.n_layer == 3
    assert [b.attn.layer_idx for b in gpt.transformer.h] == [0, 1, 2]


def test_without_renumbering_the_cache_decoding_breaks():
    """The cache test has teeth: a pruned model whose attention keeps its old layer_idx does not
    decode incrementally like its own full forward."""
    model = _llama()
    pruned = remove_blocks(model, [0])
    for j, blk in enumerate(pruned.model.layers):
        blk.self_attn.layer_idx = j + 1  # the indices before pruning
    ids = torch.randint(1, V, (2, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = pruned(input_ids=ids, use_cache=False).logits
    try:
        inc = _incremental_logits(pruned, ids, prefix=4)
    except (IndexError, RuntimeError, ValueError):
        return
    assert not torch.allclose(inc, full, atol=1e-4)


def test_remove_blocks_errors_and_inplace():
    model = _gpt2()
    for bad, err in (([4], "out of range"), ([0, 0], "twice"), ([0, 1, 2, 3], "all 4 blocks"),
                     ([], "empty"), (["model.layers.1"], "not a block"), ([1.0], "ints")):
        with pytest.raises((ValueError, TypeError), match=err):
            remove_blocks(model, bad)
    with pytest.raises(ValueError, match="stack='transformer.wte'"):
        remove_blocks(model, [0], stack="transformer.wte")
    same = remove_blocks(model, [3], inplace=True)
    assert same is model and len(model.transformer.h) == 3


def test_bert_encoder_layer():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(1, V, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0]])
    h = _skip_by_hand(model, 1)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    h.remove()
    pruned = remove_blocks(model, [1])
    assert transformer_blocks(pruned)[0] == "bert.encoder.layer"
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=ids, attention_mask=mask).logits, ref, atol=1e-5)
    assert head_modules(pruned) == ["bert.pooler", "classifier"]


def test_torch_transformer_encoder_and_torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True,
                                                           dropout=0.0), 4,
                                enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 8)
    h = _skip_by_hand(enc, 2)
    with torch.no_grad():
        ref = enc(x)
    h.remove()
    small = remove_blocks(enc, [2])
    assert small.num_layers == 3
    with torch.no_grad():
        assert torch.allclose(small(x), ref, atol=1e-6)

    vit = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=4,
                                               num_heads=2, hidden_dim=16, mlp_dim=32,
                                               num_classes=5).eval()
    img = torch.randn(2, 3, 16, 16)
    h = _skip_by_hand(vit, 1)
    with torch.no_grad():
        ref = vit(img)
    h.remove()
    small = remove_blocks(vit, [1, 3])
    # the renumbered Sequential has the keys of a ViT built with 2 layers
    fresh = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=16, mlp_dim=32,
                                                 num_classes=5)
    fresh.load_state_dict(small.state_dict())
    one = remove_blocks(vit, [1])
    with torch.no_grad():
        assert torch.allclose(one(img), ref, atol=1e-5)
    assert head_modules(one) == ["encoder.ln", "heads"]


# ---------------------------------------------------------------------------- criteria
def _tok(s):
    return [1 + (ord(c) % (V - 1)) for c in s]


TEXTS = ["the cat sat on the mat", "a dog ran", "hidden states of every block",
         "x", "pruning the deeper layers", "tokens and padding"]


def test_block_states_equal_hf_output_hidden_states():
    model = _llama()
    batches = lm_batches(_tok, TEXTS, max_length=12, batch_size=4, labels=[0, 1, 0, 1, 0, 1])
    s = block_states(model, batches)
    # the reference: HF's own hidden states, with the final norm removed so that the last entry
    # is the last block's raw output (HF returns it after the norm)
    ref_model = copy.deepcopy(model)
    ref_model.model.norm = nn.Identity()
    hs, masks = [], []
    with torch.no_grad():
        for b in batches:
            out = ref_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                            output_hidden_states=True, use_cache=False)
            hs.append([h.double().numpy() for h in out.hidden_states])
            masks.append(b["attention_mask"].numpy().astype(bool))
        hf = model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]
                   ["attention_mask"], output_hidden_states=True).hidden_states
    assert len(hs[0]) == 5 and s.layers[0] == "embeddings"
    for i in range(4):  # HF's unmodified hidden states agree before the final norm
        if i < 3:
            assert torch.allclose(hf[i + 1], torch.from_numpy(hs[0][i + 1]).float(), atol=1e-6)
        with np.errstate(invalid="ignore"):  # Llama's padding embedding is zero
            cos = np.concatenate([
                ((a[i] * a[i + 1]).sum(-1) / np.linalg.norm(a[i], axis=-1)
                 / np.linalg.norm(a[i + 1], axis=-1))[m] for a, m in zip(hs, masks)])
        assert s.block_influence[i].item() == pytest.approx(1 - cos.mean(), abs=1e-5)
    last = np.concatenate([np.stack([a[layer][np.arange(len(m)), m.sum(1) - 1]
                                     for layer in range(5)], 1) for a, m in zip(hs, masks)])
    assert np.allclose(s.last.numpy(), last, atol=1e-5)
    mean = np.concatenate([np.stack([(a[layer] * m[..., None]).sum(1) / m.sum(1, keepdims=True)
                                     for layer in range(5)], 1) for a, m in zip(hs, masks)])
    assert np.allclose(s.mean.numpy(), mean, atol=1e-5)
    assert torch.equal(s.y, torch.cat([b["labels"] for b in batches]))
    assert s.tokens == int(sum(m.sum() for m in masks))

    # angular distance: brute force over every start from the same reference states
    for n in (1, 2):
        d = [np.mean(np.arccos(np.clip((last[:, l] * last[:, l + n]).sum(-1)
                                       / np.linalg.norm(last[:, l], axis=-1)
                                       / np.linalg.norm(last[:, l + n], axis=-1), -1, 1))
                     / math.pi) for l in range(5 - n)]
        sel = select_blocks(s, "angular", n)
        assert np.allclose(sel.scores, d, atol=1e-6)
        start = int(np.argmin(d))
        assert sel.blocks == list(range(start, start + n))
    bi = select_blocks(s, "block_influence", 2)
    assert bi.blocks == sorted(np.argsort(s.block_influence.numpy(), kind="stable")[:2].tolist())


def test_select_blocks_baselines():
    s = block_states(_gpt2(), lm_batches(_tok, TEXTS, max_length=8, batch_size=3,
                                         labels=[0, 1, 2, 0, 1, 2]))
    assert select_blocks(s, "reverse", 3).blocks == [1, 2, 3]
    r0, r0b, r1 = (select_blocks(s, "random", 2, seed=q).blocks for q in (0, 0, 1))
    assert r0 == r0b and len(set(r0)) == 2
    assert any(select_blocks(s, "random", 2, seed=q).blocks != r0 for q in range(1, 6))
    # adjacent CKA: linear CKA of the mean-pooled input and output of each block, by formula
    cka = select_blocks(s, "cka", 1)
    x = s.mean.double().numpy()

    def lin_cka(a, b):
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(a.T @ b) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    ref = [lin_cka(x[:, i], x[:, i + 1]) for i in range(4)]
    assert np.allclose(cka.scores, ref, atol=1e-5)
    assert cka.blocks == [int(np.argmax(ref))]
    mod = select_blocks(s, "modularity", 2, k=2)
    q = np.array(mod.scores)
    assert mod.blocks == sorted(np.argsort(q[1:] - q[:-1], kind="stable")[:2].tolist())
    with pytest.raises(ValueError, match="smaller than the number of blocks"):
        select_blocks(s, "reverse", 4)
    with pytest.raises(ValueError, match="criterion must be one of"):
        select_blocks(s, "entropy", 1)
    unlabelled = block_states(_gpt2(), lm_batches(_tok, TEXTS, max_length=8))
    with pytest.raises(ValueError, match="labelled texts"):
        select_blocks(unlabelled, "modularity", 1)


# ---------------------------------------------------------------------------- evaluation
def test_perplexity_equals_hf_loss_and_ignores_padding():
    model = _gpt2()
    ids = torch.randint(1, V, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        hf = model(input_ids=ids, labels=ids).loss.item()
    r = perplexity(model, [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}])
    assert r["nll"] == pytest.approx(hf, abs=1e-5) and r["tokens"] == 9
    # padded batches: token-weighted over the real tokens only, the same as unpadded one by one
    batches = lm_batches(_tok, TEXTS, max_length=10, batch_size=4, chunk=False)
    padded = perplexity(model, batches)
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in TEXTS:
            t = torch.tensor([_tok(text)[:10]])
            if t.shape[1] < 2:
                continue
            nll += model(input_ids=t, labels=t).loss.item() * (t.shape[1] - 1)
            count += t.shape[1] - 1
    assert padded["tokens"] == count
    assert padded["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_heal_partial_trains_only_the_last_blocks_and_head():
    model = remove_blocks(_llama(), [1])
    model.config.tie_word_embeddings = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = lm_batches(_tok, TEXTS * 3, max_length=8, batch_size=4)
    h = heal(model, data, mode="partial", last_k=1, steps=8, lr=1e-2)
    assert h["modules"] == ["model.layers.2", "model.norm", "lm_head"]
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(("model.layers.2.", "model.norm", "lm_head"))
                           for k in changed), changed
    assert any(k.startswith("model.layers.2.") for k in changed)
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    assert h["loss"][-1] < h["loss"][0]
    assert heal(model, data, mode="none")["steps"] == 0


def test_heal_resumes_bitwise(tmp_path):
    data = lm_batches(_tok, TEXTS * 2, max_length=8, batch_size=3)
    full = remove_blocks(_gpt2(), [0])
    heal(full, data, mode="all", steps=6, lr=1e-2, seed=3)
    part = remove_blocks(_gpt2(), [0])
    ckpt = tmp_path / "heal.pt"

    def stop(step, loss):
        if step == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        heal(part, data, mode="all", steps=6, lr=1e-2, seed=3, checkpoint=ckpt,
             checkpoint_every=2, on_step=stop)
    resumed = remove_blocks(_gpt2(), [0])
    h = heal(resumed, data, mode="all", steps=6, lr=1e-2, seed=3, checkpoint=ckpt,
             checkpoint_every=2)
    assert h["resumed_from"] == 2
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="other settings"):
        heal(remove_blocks(_gpt2(), [0]), data, mode="all", steps=6, lr=5e-3, seed=3,
             checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a dyngraph healing checkpoint"):
        heal(remove_blocks(_gpt2(), [0]), data, steps=2, checkpoint=ckpt)


def test_lm_batches_checks():
    with pytest.raises(TypeError, match="list of strings"):
        lm_batches(_tok, "one string")
    with pytest.raises(ValueError, match="labels has 1 entries"):
        lm_batches(_tok, TEXTS[:2], labels=[0])
    with pytest.raises(ValueError, match="no text has 2 tokens"):
        lm_batches(_tok, ["x"])
    # windows of 3 tokens; a last window of one token predicts nothing and is dropped; each
    # window keeps its text's label
    b = lm_batches(_tok, ["abcdefg", "hijk"], max_length=3, labels=[4, 7])
    assert b[0]["attention_mask"].tolist() == [[1, 1, 1]] * 3
    assert b[0]["input_ids"][:3].tolist() == [_tok("abc"), _tok("def"), _tok("hij")]
    assert b[0]["labels"].tolist() == [4, 4, 7]


# ---------------------------------------------------------------------------- the study
def test_study_end_to_end_and_resume(tmp_path):
    model = _gpt2()
    labels = [0, 1, 0, 1, 0, 1]
    kw = dict(labels=labels, eval_texts=TEXTS[::-1], fractions=(0.25, 0.5), seeds=(0, 1),
              heal_steps=2, heal_lr=1e-3, max_length=12, batch_size=3, modularity_k=2,
              latency=False, log=None)
    r = transformer_prune_study(model, _tok, TEXTS, tmp_path, **kw)
    assert r["config"]["budgets"] == [1, 2]
    rows = r["rows"]
    assert rows["reverse@0.5"]["blocks"] == [2, 3]
    assert set(rows) == {"control"} | {f"{c}@{f}" for f in ("0.25", "0.5") for c in (
        "block_influence", "angular", "reverse", "random0", "random1", "cka", "modularity")}
    for name, row in rows.items():
        pruned = remove_blocks(model, row["blocks"]) if row["blocks"] else model
        assert row["params"] == sum(p.numel() for p in pruned.parameters()), name
        if row["blocks"]:  # straight after pruning: the pruned model's own perplexity
            ev = lm_batches(_tok, TEXTS[::-1], max_length=12, batch_size=3)
            assert row["perplexity_pruned"] == pytest.approx(
                perplexity(pruned, ev)["perplexity"], rel=1e-6)
    assert "random, mean ± std (2 seeds)" in r["table"]
    saved = json.loads((tmp_path / "transformer_prune.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "transformer_prune.md").read_text().strip() == r["table"]
    assert model.config.num_hidden_layers == 4 and len(model.transformer.h) == 4
    # a rerun finds every row done and changes nothing
    again = transformer_prune_study(model, _tok, TEXTS, tmp_path, **kw)
    assert again["rows"] == json.loads(json.dumps(rows))
    with pytest.raises(ValueError, match="other settings"):
        transformer_prune_study(model, _tok, TEXTS, tmp_path, **{**kw, "heal_steps": 3})


def test_study_from_a_model_folder(tmp_path):
    """The path a real LLM takes: a local Hugging Face folder, its own tokenizer, offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {c: i for i, c in enumerate(["<pad>"] + list("abcdefghijklmnopqrstuvwxyz "))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")
    model = _llama()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    r = transformer_prune_study(str(tmp_path / "m"), None, TEXTS, tmp_path / "out",
                                criteria=["reverse", "block_influence"], fractions=[0.5],
                                heal="none", control=False, max_length=12, latency=False,
                                log=None)
    assert r["rows"]["reverse@0.5"]["blocks"] == [2, 3]
    assert "modularity left out" not in " ".join(r["notes"])
    ev = lm_batches(tok, TEXTS, max_length=12, batch_size=8)
    assert r["baseline"]["perplexity"] == pytest.approx(perplexity(model, ev)["perplexity"],
                                                        rel=1e-5)
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        transformer_prune_study(str(tmp_path), None, TEXTS, tmp_path / "o2", log=None)
    with pytest.raises(ValueError, match="tokenizer is required"):
        transformer_prune_study(model, None, TEXTS, tmp_path / "o3", log=None)


def test_study_of_a_classifier_reports_accuracy(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=4,
                                  num_attention_heads=2, intermediate_size=32, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    labels = [0, 1, 0, 1, 0, 1]
    r = transformer_prune_study(model, _tok, TEXTS, tmp_path, labels=labels, task="classify",
                                criteria=["reverse", "angular"], fractions=[0.5], heal_steps=3,
                                heal_lr=1e-3, max_length=12, latency=False, log=None)
    row = r["rows"]["reverse@0.5"]
    assert row["blocks"] == [2, 3] and row["heal"]["modules"] == [
        "bert.encoder.layer.1", "bert.pooler", "classifier"]
    batches = lm_batches(_tok, TEXTS, max_length=12, batch_size=8, labels=labels, chunk=False,
                         min_tokens=1)
    with torch.no_grad():
        pred = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                          .logits.argmax(1) for b in batches])
    assert r["baseline"]["accuracy"] == pytest.approx(
        float((pred == torch.tensor(labels)).float().mean()))
    assert "acc pruned" in r["table"]
    with pytest.raises(ValueError, match="needs labels"):
        transformer_prune_study(model, _tok, TEXTS, tmp_path / "x", task="classify", log=None)

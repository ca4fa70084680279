"""Depth pruning of a causal LM: does any criterion beat removing the last blocks?

1. Builds a corpus of real English running text that ships offline with Python and numpy: the
   Python Language Reference / library topics of ``pydoc_data`` (CPython's own documentation),
   the docstrings of the standard library, and numpy's docstrings (parsed from the sources, never
   imported). Each text is labelled with its source (3 classes, used by the modularity
   criterion); whole documents are split 90/10 into training and held-out text.
2. Trains a byte-level BPE tokenizer (1024 tokens, Hugging Face ``tokenizers``) and a Llama-style
   causal LM (8 blocks, hidden 128, about 1.7M parameters) on the training text, with
   dyngraph's own resumable loop (``heal(mode='all')``), and saves both as a Hugging Face model
   folder.
3. Runs :func:`transformer_prune_study` on that folder, exactly as on a real LLM folder: every
   criterion (Block Influence, angular distance, reverse order, random x3, adjacent CKA,
   modularity with the source labels) at 25% and 50% of the blocks, each pruned model healed
   the same way (the last blocks and the head, "partial-layer"), perplexity on the held-out
   documents before and after healing, parameters, FLOPs and latency; ``perplexity.png`` draws
   every row's perplexity before and after healing.

Run:  python examples/llm_depth_pruning.py [--out runs/llm_pruning] [--quick]
      python examples/llm_depth_pruning.py --model-dir /path/to/llama --device cuda \
          --dtype bfloat16 --heal-lr 1e-5
        (a real LLM folder: no training; the same corpus, or --text FILE with one text per line)
Everything is cached in --out: a rerun skips the training and every finished row.
On a busy shared machine, one torch thread is faster than two (set below).
"""
import argparse
import ast
import json
import os
import random
import sysconfig
from pathlib import Path

import torch

from dyngraph.prune import heal, lm_batches, perplexity, transformer_prune_study

SOURCES = ("python reference", "python stdlib docstrings", "numpy docstrings")


def _docstrings(root: str, min_chars: int = 200):
    skip = {"test", "tests", "idlelib", "lib2to3", "site-packages", "_vendor", "__pycache__"}
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in skip and not d.startswith("."))
        for f in sorted(files):
            if not f.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, f), encoding="utf-8") as fh:
                    tree = ast.parse(fh.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc) >= min_chars:
                        out.append(doc)
    return out


def _pieces(text: str, size: int = 1500):
    """A long text cut at paragraph breaks into pieces of about ``size`` characters."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= size:
            out.append(cur)
            cur = ""
    if len(cur) >= 200:
        out.append(cur)
    return out


def corpus(seed: int = 0):
    """``{'train': (texts, labels), 'eval': (texts, labels)}``: documents of the three sources,
    shuffled and split 90/10 per source (held-out documents are never trained on)."""
    import pydoc_data.topics

    import numpy
    docs = [
        [p for t in pydoc_data.topics.topics.values() for p in _pieces(t)],
        _docstrings(sysconfig.get_paths()["stdlib"]),
        _docstrings(os.path.dirname(numpy.__file__)),
    ]
    rng = random.Random(seed)
    split = {"train": ([], []), "eval": ([], [])}
    for label, texts in enumerate(docs):
        texts = sorted(set(texts))
        rng.shuffle(texts)
        n_eval = len(texts) // 10
        for part, chunk in (("eval", texts[:n_eval]), ("train", texts[n_eval:])):
            split[part][0].extend(chunk)
            split[part][1].extend([label] * len(chunk))
    return split


def train_tokenizer(texts, folder: Path, vocab: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return fast


def balanced(texts, labels, per_class: int, seed: int = 0):
    """``per_class`` texts of every label (seeded)."""
    rng = random.Random(seed)
    out_t, out_y = [], []
    for c in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(idx)
        out_t += [texts[i] for i in idx[:per_class]]
        out_y += [c] * min(per_class, len(idx))
    return out_t, out_y


def figure(report, path: Path) -> None:
    """Every row's held-out perplexity straight after pruning (red) and after healing (blue), one
    panel per fraction; the unpruned model and the control (the unpruned model healed alike) as
    vertical lines."""
    from matplotlib.ticker import LogLocator, NullLocator, ScalarFormatter

    from dyngraph.outputs import new_figure, save_figure
    cfg, rows = report["config"], report["rows"]
    per = max(sum(r.get("fraction") == f for r in rows.values()) for f in cfg["fractions"])
    fig, axes = new_figure((7.0, 0.8 + len(cfg["fractions"]) * (0.6 + 0.25 * per)),
                           nrows=len(cfg["fractions"]))
    axes = list(getattr(axes, "flat", [axes]))
    for ax, f, n in zip(axes, cfg["fractions"], cfg["budgets"]):
        names = [k for k, r in rows.items() if r.get("fraction") == f]
        for y, k in enumerate(names):
            a, b = rows[k]["perplexity_pruned"], rows[k]["perplexity_healed"]
            ax.plot([a, b], [y, y], color="0.6", lw=1, zorder=1)
            ax.scatter([a], [y], color="tab:red", s=18, zorder=2,
                       label="after pruning" if y == 0 else None)
            ax.scatter([b], [y], color="tab:blue", s=18, zorder=2,
                       label="after healing" if y == 0 else None)
        ax.set_yticks(range(len(names)), [k.rsplit("@", 1)[0] for k in names], fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.axvline(report["baseline"]["perplexity"], color="k", lw=1, label="unpruned")
        if "control" in rows:
            ax.axvline(rows["control"]["perplexity_healed"], color="k", lw=1, ls="--",
                       label="unpruned, healed alike")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{n} of {cfg['blocks']} blocks removed", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    lo = min(min(r.get("perplexity_healed") or 1e9, r.get("perplexity_pruned") or 1e9)
             for r in rows.values())
    hi = max(max(r.get("perplexity_healed") or 0, r.get("perplexity_pruned") or 0)
             for r in rows.values())
    for ax in axes:
        ax.set_xlim(lo / 1.08, hi * 1.08)
    axes[-1].set_xlabel("held-out perplexity (log scale; lower is better)")
    axes[0].legend(fontsize=7, loc="center")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/llm_pruning")
    ap.add_argument("--model-dir", help="a local Hugging Face causal-LM folder (skips training)")
    ap.add_argument("--text", help="a file with one text per line (instead of the corpus)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                    help="the dtype a --model-dir model is loaded in (default: its own)")
    ap.add_argument("--train-steps", type=int, default=450)
    ap.add_argument("--heal-steps", type=int, default=60)
    ap.add_argument("--heal-lr", type=float, default=3e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = ap.parse_args()
    if args.quick:
        args.train_steps, args.heal_steps = 4, 2
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = corpus()
    train_t, train_y = data["train"]
    eval_t, eval_y = data["eval"]
    if args.text:
        lines = [s for s in Path(args.text).read_text(encoding="utf-8").splitlines() if s.strip()]
        cut = len(lines) // 10
        eval_t, eval_y, train_t, train_y = lines[:cut], None, lines[cut:], None
    print(f"corpus: {len(train_t)} training and {len(eval_t)} held-out documents, "
          f"{sum(map(len, train_t)):,} / {sum(map(len, eval_t)):,} characters")

    model_dir = Path(args.model_dir) if args.model_dir else out / "model"
    if not args.model_dir and not (model_dir / "model.safetensors").exists():
        from transformers import LlamaConfig, LlamaForCausalLM
        tok = train_tokenizer(train_t, model_dir)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=352,
                          num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=args.max_length, tie_word_embeddings=True,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id)
        torch.manual_seed(0)
        lm = LlamaForCausalLM(cfg)
        batches = lm_batches(tok, train_t, max_length=args.max_length,
                             batch_size=args.batch_size)
        held = lm_batches(tok, eval_t, max_length=args.max_length, batch_size=64)
        n_tok = sum(int(b["attention_mask"].sum()) for b in batches)
        print(f"training {sum(p.numel() for p in lm.parameters()):,} parameters on {n_tok:,} "
              f"tokens ({len(batches)} batches), {args.train_steps} steps")
        hist = heal(lm, batches, mode="all", steps=args.train_steps, lr=1e-3,
                    weight_decay=0.01, checkpoint=out / "train.pt", checkpoint_every=25,
                    progress=True)
        ppl = perplexity(lm, held)
        print(f"trained in {hist['seconds']:.0f} s: loss {hist['loss'][0]:.2f} → "
              f"{hist['loss'][-1]:.2f}, held-out perplexity {ppl['perplexity']:.2f}")
        lm.save_pretrained(model_dir)
        (out / "train.json").write_text(json.dumps({
            "steps": args.train_steps, "seconds": hist["seconds"], "tokens": n_tok,
            "loss_first": hist["loss"][0], "loss_last": hist["loss"][-1],
            "heldout_perplexity": ppl["perplexity"]}, indent=2))

    # calibration: 64 training documents per source, labelled; healing: the training text
    # evaluation: 30 held-out documents per source
    calib_t, calib_y = balanced(train_t, train_y, 64) if train_y else (train_t[:192], None)
    eval_t = balanced(eval_t, eval_y, 30)[0] if eval_y else eval_t[:90]
    report = transformer_prune_study(
        str(model_dir), None, calib_t, out / "study", labels=calib_y, eval_texts=eval_t,
        heal_texts=train_t, fractions=(0.25, 0.5), seeds=(0, 1, 2), heal="partial",
        heal_steps=args.heal_steps, heal_lr=args.heal_lr, max_length=args.max_length,
        batch_size=args.batch_size, device=args.device,
        dtype=getattr(torch, args.dtype) if args.dtype else None, progress=False)
    print(report["table"])
    print(json.dumps(report["summary"], indent=1))
    figure(report, out / "perplexity.png")
    print(f"wrote {out / 'study'} and {out / 'perplexity.png'}")


if __name__ == "__main__":
    main()

"""``dyngraph prune --hf MODEL_DIR --text FILE``: the transformer depth-pruning study offline."""
import json

import pytest
import torch

from dyngraph.cli._main import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    d = tmp_path_factory.mktemp("lm")
    vocab = {c: i for i, c in enumerate(["<pad>"] + list("abcdefghijklmnopqrstuvwxyz ."))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=4, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64,
                                   bos_token_id=0, eos_token_id=0, pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d / "m")
    tok.save_pretrained(d / "m")
    docs = [f"the cat sat on mat number {'abc'[i % 3]}. a dog ran far." for i in range(20)]
    (d / "docs.txt").write_text("\n\n".join(docs))
    return d


def test_prune_hf_runs_the_study(lm_dir, tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["prune", "--hf", str(lm_dir / "m"), "--text", str(lm_dir / "docs.txt"),
            "--criteria", "reverse", "block_influence", "random", "--fractions", "0.5",
            "--random-seeds", "0", "1", "--heal-steps", "2", "--max-length", "16",
            "--no-latency", "--no-control", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    rep = json.loads((out / "transformer_prune.json").read_text())
    assert rep["rows"]["reverse@0.5"]["blocks"] == [2, 3]
    assert {"random0@0.5", "random1@0.5", "block_influence@0.5"} <= set(rep["rows"])
    assert (out / "transformer_prune.md").exists()
    printed = capsys.readouterr().out
    assert "seeded 10% of --text (2 texts)" in printed
    # a rerun finds every row done
    assert main(argv) == 0


def test_prune_hf_flag_errors(lm_dir, tmp_path, capsys):
    base = ["prune", "--out", str(tmp_path / "o"), "--quiet"]
    cases = [(["--hf", str(lm_dir / "m")], "--hf needs --text"),
             (["--hf", str(tmp_path), "--text", str(lm_dir / "docs.txt")], "no config.json"),
             (["--hf", str(lm_dir / "m"), "--text", str(lm_dir / "docs.txt"), "--fractions",
               "1.5"], "--fractions must lie in (0, 1)"),
             (["--hf", str(lm_dir / "m"), "--text", str(lm_dir / "docs.txt"), "--heal-steps",
               "0"], "--heal-steps must be"),
             (["--hf", str(lm_dir / "m"), "--text", str(tmp_path / "none.txt")],
              "does not exist"),
             (["--text", str(lm_dir / "docs.txt")], "--text is read with --hf")]
    for extra, message in cases:
        assert main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("dyngraph: error:") and message in err, (extra, err)

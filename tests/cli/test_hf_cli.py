"""``dyngraph curve --hf MODEL_DIR --text ...``: a local Hugging Face folder and labelled text."""
import json

import pytest
import torch

from dyngraph.cli._main import main

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    import dyngraph as dg
    d = tmp_path_factory.mktemp("hf")
    tok = transformers.AutoTokenizer.from_pretrained(dg.zoo.minilm_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32)
    transformers.BertModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    rows = ["text,label"] + [f"{w} {i},{lab}" for i in range(12)
                             for w, lab in (("sunny day", "pos"), ("awful rain", "neg"))]
    (d / "t.csv").write_text("\n".join(rows) + "\n")
    return d


def test_curve_on_a_local_hf_folder(hf_dir, tmp_path, capsys):
    args = ["curve", "--hf", str(hf_dir), "--text", str(hf_dir / "t.csv"), "--per-class", "8",
            "--repeats", "2", "--null", "3", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    d = json.loads((tmp_path / "a" / "curve.json").read_text())
    assert d["layers"] == ["encoder.layer.0:input", "encoder.layer.0", "encoder.layer.1"]
    assert d["meta"]["pool"] == "mean" and d["meta"]["model"]["classes"] == ["neg", "pos"]
    assert d["meta"]["extracted"]["rows"] <= 24
    capsys.readouterr()
    # every real token a sample
    assert main(args + ["--pool", "tokens", "--out", str(tmp_path / "b")]) == 0
    d = json.loads((tmp_path / "b" / "curve.json").read_text())
    assert d["meta"]["pool"] == "tokens" and d["meta"]["n_samples"] == 16


def test_hf_flag_errors(hf_dir, tmp_path, capsys):
    out = ["--out", str(tmp_path / "x"), "--quiet"]
    cases = [(["--hf", str(hf_dir)], "--hf needs --text"),
             (["--text", str(hf_dir / "t.csv")], "--text is read with --hf"),
             (["--pool", "mean"], "--pool mean pools token sequences"),
             (["--hf", str(tmp_path), "--text", "wordfreq"], "no config.json"),
             (["--hf", str(hf_dir), "--text", str(hf_dir / "missing.csv")], "does not exist"),
             (["--hf", str(hf_dir), "--text", str(hf_dir / "t.csv"), "--languages", "en"],
              "--languages is for --text wordfreq"),
             (["--hf", str(hf_dir), "--text", str(hf_dir / "t.csv"), "--max-length", "0"],
              "--max-length must be")]
    for extra, message in cases:
        assert main(["curve", *extra, *out]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("dyngraph: error:") and message in err, (extra, err)

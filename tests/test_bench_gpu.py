"""The GPU benchmark's plumbing, run on CPU at tiny sizes (the real run is benchmarks/gpu_check.sh
on a CUDA machine)."""
import importlib.util
import json
from pathlib import Path


def test_bench_gpu_smoke(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gpu.json"
    assert mod.main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["N"] for r in rows] == [600, 1500]
    for r in rows:  # the low-precision candidates are re-ranked exactly: recall 1 against fp32
        assert r["bf16_recall"] == 1.0 and r["tf32_recall"] == 1.0
        assert r["gemm_s"] > 0 and r["fp32/gemm"] > 0
    assert "| 1,500 | 32 |" in capsys.readouterr().out

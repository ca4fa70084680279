"""`import dyngraph` and `dyngraph --help` stay light (issue 19): PyTorch Geometric, plotting,
TensorBoard, SciPy and Hugging Face are imported where they are first used, never at import.

These are properties of a fresh interpreter's ``sys.modules``, not wall-clock limits.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

#: libraries that `import dyngraph` and the CLI's parser must not import
HEAVY = ("torch_geometric", "matplotlib", "transformers", "tensorboard", "scipy", "sklearn",
         "torch_cluster", "torch_scatter", "torchvision", "networkx")


def _fresh(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with this checkout first on the path."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    prelude = "import sys, json, warnings; warnings.simplefilter('default'); "
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                          check=True, cwd=ROOT, env=env)


def _loaded(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_import_dyngraph_imports_no_heavy_library():
    out = _fresh("import dyngraph; "
                 f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert _loaded(out.stdout) == [], out.stdout
    assert "Warning" not in out.stderr, out.stderr


def test_cli_help_imports_no_heavy_library_and_prints_no_warning():
    """`dyngraph --help` and every `dyngraph COMMAND --help` build the whole parser only."""
    out = _fresh(
        "from dyngraph.cli._main import build_parser, main\n"
        "for argv in [['--help']] + [[c, '--help'] for c in "
        "        build_parser()._subparsers._group_actions[0].choices]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert "usage: dyngraph curve" in out.stdout
    assert _loaded(out.stdout) == [], out.stdout
    assert "Warning" not in out.stderr, out.stderr


def test_pyg_is_imported_when_a_graph_is_built_and_snapshots_are_pyg_data():
    out = _fresh(
        "import torch, dyngraph as dg\n"
        "from dyngraph import _pyg\n"
        "seen = {'after_import': 'torch_geometric' in sys.modules}\n"
        "seen['is_data_int'] = _pyg.is_data(1)\n"
        "try:\n"
        "    dg.DynamicGraph([1])\n"
        "except TypeError:\n"
        "    seen['typeerror'] = True\n"
        "seen['after_refusal'] = 'torch_geometric' in sys.modules\n"
        "x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0))\n"
        "d = dg.GraphSpec(k=4).build(x, torch.arange(40) % 2)\n"
        "from torch_geometric.data import Batch, Data\n"
        "seen['after_build'] = 'torch_geometric' in sys.modules\n"
        "seen['is_data'] = isinstance(d, Data) and _pyg.is_data(d)\n"
        "seen['batch'] = isinstance(dg.DynamicGraph([d, d]).to_batch(), Batch)\n"
        "print(json.dumps(seen))")
    assert _loaded(out.stdout) == {"after_import": False, "is_data_int": False, "typeerror": True,
                                   "after_refusal": False, "after_build": True, "is_data": True,
                                   "batch": True}
    # PyG's own import-time notices (torch.jit.script's deprecation) are filtered at that import
    assert "torch.jit.script" not in out.stderr, out.stderr


def test_lazy_pyg_functions_are_pygs():
    from dyngraph import _pyg

    utils = _pyg.load().utils
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 30, (2, 200), generator=g)
    w = torch.rand(200, generator=g, dtype=torch.float64)
    for a, b in zip(_pyg.coalesce(ei, w, 30, reduce="add"), utils.coalesce(ei, w, 30, reduce="add")):
        assert torch.equal(a, b)
    for reduce in ("sum", "mean"):
        assert torch.equal(_pyg.scatter(w, ei[0], dim=0, dim_size=30, reduce=reduce),
                           utils.scatter(w, ei[0], dim=0, dim_size=30, reduce=reduce))
    for a, b in zip(_pyg.to_undirected(ei, w, num_nodes=30, reduce="mean"),
                    utils.to_undirected(ei, w, num_nodes=30, reduce="mean")):
        assert torch.equal(a, b)
    keep = torch.arange(0, 30, 2)
    for a, b in zip(_pyg.subgraph(keep, ei, w, relabel_nodes=True, num_nodes=30),
                    utils.subgraph(keep, ei, w, relabel_nodes=True, num_nodes=30)):
        assert torch.equal(a, b)
    assert _pyg.Data is __import__("torch_geometric.data").data.Data


def test_extension_flags_are_read_on_first_use():
    out = _fresh("import dyngraph as dg; before = 'torch_cluster' in sys.modules; "
                 "flags = [dg.typing.WITH_TORCH_CLUSTER, dg.typing.WITH_TORCH_SCATTER]; "
                 "print(json.dumps({'before': before, 'flags': flags, "
                 "'handles': [dg.typing.torch_cluster is not None, "
                 "dg.typing.torch_scatter is not None], "
                 "'summary': dg.typing.extensions_summary()}))")
    seen = _loaded(out.stdout)
    assert seen["before"] is False
    assert all(isinstance(f, bool) for f in seen["flags"])
    assert seen["flags"] == seen["handles"]
    yes = ["yes" if f else "no" for f in seen["flags"]]
    assert seen["summary"] == f"torch-cluster={yes[0]}, torch-scatter={yes[1]}"

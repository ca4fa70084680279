"""The 0.2 namespace: a small top level, subpackages that read as the data flow, private modules,
no module shadowed by a function, every exported name importable."""
import importlib
import inspect
import pkgutil
import types

import dyngraph as dg

SUBPACKAGES = ["capture", "graphs", "measures", "profiles", "outputs", "prune", "compare",
               "neurons", "theory", "distributed", "zoo"]


def test_top_level_is_small_and_resolves():
    assert len(dg.__all__) <= 30
    assert len(set(dg.__all__)) == len(dg.__all__)
    for name in dg.__all__:
        assert hasattr(dg, name), name
    for sub in SUBPACKAGES:
        assert isinstance(getattr(dg, sub), types.ModuleType), sub


def test_subpackages_export_what_they_list():
    for sub in SUBPACKAGES:
        mod = importlib.import_module(f"dyngraph.{sub}")
        assert mod.__all__, sub
        for name in mod.__all__:
            assert hasattr(mod, name), f"dyngraph.{sub}.{name}"


def test_no_module_is_shadowed_and_private_modules_are_underscored():
    seen = []
    for info in pkgutil.walk_packages(dg.__path__, "dyngraph."):
        if info.name == "dyngraph.__main__":
            continue
        mod = importlib.import_module(info.name)
        parent_name, _, leaf = info.name.rpartition(".")
        parent = importlib.import_module(parent_name)
        # the attribute of the parent with the module's name is that module (or absent)
        attr = getattr(parent, leaf, None)
        assert attr is None or attr is mod, f"{info.name} is shadowed by {attr!r}"
        if not info.ispkg and parent_name != "dyngraph" and parent_name != "dyngraph.cli.commands":
            assert leaf.startswith("_"), f"{info.name}: modules inside subpackages are private"
        seen.append(info.name)
    assert "dyngraph.capture._taps" in seen


def test_no_private_name_is_imported_across_modules():
    """A helper that another module needs is named publicly inside its private module
    (``from ._modularity import modularity_q``, not ``_q``); aliases such as ``import x as _x``
    and the private modules themselves are fine."""
    import ast
    from pathlib import Path
    root = Path(dg.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or "dyngraph" in (node.module or "")):
                found += [f"{path.relative_to(root)}: {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")
                          and not _is_module(path, node, a.name)]
    assert not found, found


def _is_module(path, node, name):
    """Whether ``from <node.module> import <name>`` names a module (``from . import _pyg``)."""
    base = path.parent
    for _ in range(max(node.level - 1, 0)):
        base = base.parent
    for part in (node.module or "").split("."):
        if part and part != "dyngraph":
            base = base / part
    return (base / f"{name}.py").exists() or (base / name / "__init__.py").exists()


def test_public_functions_have_docstrings_and_type_hints():
    missing = []
    for sub in ["capture", "graphs", "profiles", "outputs"]:
        mod = getattr(dg, sub)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                if not (obj.__doc__ or "").strip():
                    missing.append(f"{sub}.{name}: docstring")
                if "return" not in obj.__annotations__:
                    missing.append(f"{sub}.{name}: return type")
    assert not missing, missing


def test_import_is_quiet_and_lazy():
    """`import dyngraph` prints no warning and loads no plotting, TensorBoard or oracle library."""
    import subprocess
    import sys
    code = ("import sys, warnings; warnings.simplefilter('default'); import dyngraph; "
            "print(sorted(m for m in ('matplotlib', 'tensorboard', 'sklearn', 'networkx') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert "Warning" not in out.stderr, out.stderr

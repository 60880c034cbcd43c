"""The project's tools (tools/*.py, examples/) live on the public API: they import names only from a
package's `__init__`, only names in its `__all__`, and never a `_private` name.

Every package's `__all__` resolves, in a fresh process per package (so an `__init__` re-export that
forms an import cycle fails here), and no exported name shadows a submodule of its package.
"""
import ast
import importlib
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "perank_jax"
PACKAGES = sorted(".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py"))


def is_package(dotted: str) -> bool:
    return (ROOT.joinpath(*dotted.split(".")) / "__init__.py").is_file()


def private_import_problems(source: str, where: str) -> list[str]:
    """Every import in `source` of a module that is not a package, of a name not in its package's
    `__all__`, or of a `_private` name (also as `perank_jax.x._name`), as 'where:line: what'."""
    problems = []
    for node in ast.walk(ast.parse(source, where)):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "perank_jax" and not is_package(a.name):
                    problems.append(f"{line}: import {a.name} (a module, not a package)")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "perank_jax":
            if not is_package(node.module):
                problems.append(f"{line}: from {node.module} (a module, not a package)")
                continue
            public = set(importlib.import_module(node.module).__all__)
            for a in node.names:
                if a.name.startswith("_"):
                    problems.append(f"{line}: from {node.module} import {a.name} (a private name)")
                elif a.name not in public and not is_package(f"{node.module}.{a.name}"):
                    problems.append(f"{line}: from {node.module} import {a.name} (not in its __all__)")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain = ast.unparse(node)
            if chain.startswith("perank_jax."):
                problems.append(f"{line}: {chain} (a private name)")
    return problems


def tool_files() -> list[Path]:
    return sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "examples").rglob("*.py"))


def test_tools_and_examples_import_only_public_names_of_packages():
    files = tool_files()
    assert len(files) >= 10
    problems = [p for f in files for p in private_import_problems(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == [], "\n".join(problems)


def test_the_scan_sees_module_imports_private_names_and_names_outside_all():
    planted = ("import perank_jax.inference.ranker\n"
               "from perank_jax.inference.ranker import PERanker\n"
               "from perank_jax.inference import _helper\n"
               "from perank_jax.data import read_part\n"
               "import perank_jax\n"
               "x = perank_jax.inference._private\n"
               "from perank_jax.inference import PERanker\n"
               "from perank_jax import cli, PERanker\n")
    problems = private_import_problems(planted, "t.py")
    assert [p.split(": ", 1)[0] for p in problems] == ["t.py:1", "t.py:2", "t.py:3", "t.py:4", "t.py:6"], problems


FRESH_IMPORTS = """
import os, sys
import jax, jax.numpy, flax.nnx, numpy, optax, orbax.checkpoint, yaml   # third-party only, loaded once
failed = []
for pkg in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:          # a child with no perank_jax module loaded yet: this package's __init__ first
        try:
            import importlib
            m = importlib.import_module(pkg)
            missing = [n for n in m.__all__ if not hasattr(m, n)]
            assert m.__all__ and not missing, missing
        except BaseException as e:
            print(pkg, repr(e)[:1500], file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(pkg)
sys.exit(f"failed: {failed}" if failed else 0)
"""


def test_each_package_exports_what_its_all_names_in_a_fresh_process():
    """Each package imported first in an interpreter with no perank_jax module loaded (a fork of one
    that loaded only third-party libraries): its `__all__` resolves, and its re-exports form no cycle."""
    assert len(PACKAGES) >= 11
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", FRESH_IMPORTS, *PACKAGES], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_exported_name_shadows_a_submodule():
    clashes = [f"{pkg}.{name}" for pkg in PACKAGES if pkg != "perank_jax"
               for name in importlib.import_module(pkg).__all__
               if (ROOT.joinpath(*pkg.split(".")) / f"{name}.py").is_file() or is_package(f"{pkg}.{name}")]
    assert clashes == [], clashes


def test_import_perank_jax_loads_no_jax():
    code = "import sys, perank_jax\nassert 'jax' not in sys.modules\nprint(sorted(perank_jax.__all__)[0])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

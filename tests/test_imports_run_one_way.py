"""The package's imports run one way, downward through its layers, with no cycles.

Every `import` / `from ... import` in every module counts, including the lazy ones inside
functions (a lazy import still ties the two files together), and a package's `__init__` counts
as a module of its own (its re-exports are edges too). Layers, bottom up (docs/design.md):

  0 core       core/* (atomic, buckets, config, constants, interrupts, outputs, processes, sharding)
  1 listwise   listwise/* (prompts, windows, feedback: prompt, window and feedback maths, no JAX models)
  2 models     models/* (modules, their runtime wrappers, models/perank.py: THE PE-Rank maths)
  3 on disk    weights/* (every model format), data/* (runs, corpora, caches, records, fetch, prepare)
  4 inference  inference/* (decode, prefix, generate, passage vectors, PERanker, batches, parts)
  5 workflows  train/*, evaluate/*, serve/* (the HTTP rerank server)
  6 entry      cli/* (one module per group of subcommands, cli/args.py), the package's __init__ (the public API)

A module may import its own layer or any layer below; an upward import, or a cycle between
modules, fails with the offending edges named.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "perank_jax"
LAYERS = [
    {"core"},
    {"listwise"},
    {"models"},
    {"weights", "data"},
    {"inference"},
    {"train", "evaluate", "serve"},
    {"cli", "__init__"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/test_imports_run_one_way.py; add it")


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("perank_jax"):
                base = node.module
                for alias in node.names:       # `from perank_jax.models import lora` names a module
                    deps.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("perank_jax"))
        graph[mod] = {d for d in deps if d != mod and d in modules}
    return graph


def test_every_import_goes_to_the_same_or_a_lower_layer():
    graph = import_graph()
    assert len(graph) > 30
    for m in graph:                    # every module lies in a layer folder, imported or not
        layer_of(m)
    upward = [f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == [], "\n".join(upward)


def test_models_never_import_loading_or_data_code():
    """models/* import only models/* and core/*; models/perank.py (the PE-Rank maths) also listwise/*."""
    graph = import_graph()
    allowed = lambda m, d: (d.startswith(("perank_jax.models", "perank_jax.core"))
                            or (m == "perank_jax.models.perank" and d.startswith("perank_jax.listwise")))
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("perank_jax.models")
           for d in deps if not allowed(m, d)]
    assert bad == [], bad


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert cycles == [], "\n".join(cycles)


def plant_package(tmp_path, monkeypatch, files: dict[str, str]) -> None:
    """Point the checks at a fake perank_jax holding `files` (path -> source), padded past their size floor."""
    fake = tmp_path / "perank_jax"
    files = {"__init__.py": "", **files, **{f"models/pad{i}.py": "" for i in range(30)}}
    for name, text in files.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        if (fake / name).parent != fake:
            (fake / name).parent.joinpath("__init__.py").touch()
        (fake / name).write_text(text)
    monkeypatch.setattr(__import__(__name__), "PKG", fake)


def test_the_checker_sees_a_planted_upward_import_and_cycle(tmp_path, monkeypatch):
    """The walker is not vacuous: a fake package with models -> inference and a -> b -> a fails."""
    plant_package(tmp_path, monkeypatch, {
        "models/m.py": "def f():\n    from perank_jax.inference.ranker import X\n",
        "inference/ranker.py": "import perank_jax.inference.decode\n",
        "inference/decode.py": "from perank_jax.inference import ranker\n"})
    import pytest
    with pytest.raises(AssertionError, match=r"models\.m \(layer 2\) -> perank_jax\.inference\.ranker \(layer 4\)"):
        test_every_import_goes_to_the_same_or_a_lower_layer()
    with pytest.raises(AssertionError, match="perank_jax.inference.decode -> perank_jax.inference.ranker -> "
                                             "perank_jax.inference.decode"):
        test_the_import_graph_has_no_cycle()


def test_the_checker_refuses_a_module_outside_the_layer_folders(tmp_path, monkeypatch):
    """A new top-level module (perank_jax/loose.py) must be given a layer; models importing listwise fails."""
    plant_package(tmp_path, monkeypatch, {
        "loose.py": "", "models/decoder.py": "from perank_jax.listwise.prompts import X\n", "listwise/prompts.py": ""})
    import pytest
    with pytest.raises(AssertionError, match=r"perank_jax\.loose: not in any layer"):
        test_every_import_goes_to_the_same_or_a_lower_layer()
    with pytest.raises(AssertionError, match=r"models\.decoder -> perank_jax\.listwise\.prompts"):
        test_models_never_import_loading_or_data_code()

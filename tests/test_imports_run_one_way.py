"""The package's imports run one way, downward through its layers, with no cycles.

Every `import` / `from ... import` in every module counts, including the lazy ones inside
functions (a lazy import still ties the two files together). Layers, bottom up:

  0 foundations  atomic, buckets, config, constants, interrupts, sharding
  1 models       models/* (modules and their runtime wrappers), prompts, windows, feedback, perank_model
  2 on disk      weights/* (every model format), data/* (runs, corpora, caches, records, fetch, prepare)
  3 inference    decode, generate, ranker, batch_rerank, prefix, passage_vectors
  4 workflows    train/*, evaluate/*, serve/* (the HTTP rerank server)
  5 entry        cli/* (one module per group of subcommands, cli/args.py), the package's __init__ (the public API)

A module may import its own layer or any layer below; an upward import, or a cycle between
modules, fails with the offending edges named.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "perank_jax"
LAYERS = [
    {"atomic", "buckets", "config", "constants", "interrupts", "outputs", "processes", "sharding"},
    {"models", "prompts", "windows", "feedback", "perank_model"},
    {"weights", "data"},
    {"decode", "generate", "ranker", "batch_rerank", "prefix", "passage_vectors", "rerank_parts"},
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
    upward = [f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})"
              for m, deps in sorted(graph.items()) for d in sorted(deps) if layer_of(d) > layer_of(m)]
    assert upward == [], "\n".join(upward)


def test_models_never_import_loading_or_data_code():
    graph = import_graph()
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("perank_jax.models")
           for d in deps if not (d.startswith("perank_jax.models") or layer_of(d) == 0)]
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


def test_the_checker_sees_a_planted_upward_import_and_cycle(tmp_path, monkeypatch):
    """The walker is not vacuous: a fake package with models -> ranker and a -> b -> a fails."""
    fake = tmp_path / "perank_jax"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "__init__.py").write_text("")
    (fake / "models" / "m.py").write_text("def f():\n    from perank_jax.ranker import X\n")
    (fake / "ranker.py").write_text("import perank_jax.decode\n")
    (fake / "decode.py").write_text("from perank_jax import ranker\n")
    for i in range(30):
        (fake / "models" / f"pad{i}.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    import pytest
    with pytest.raises(AssertionError, match=r"models\.m \(layer 1\) -> perank_jax\.ranker \(layer 3\)"):
        test_every_import_goes_to_the_same_or_a_lower_layer()
    with pytest.raises(AssertionError, match="perank_jax.decode -> perank_jax.ranker -> perank_jax.decode"):
        test_the_import_graph_has_no_cycle()

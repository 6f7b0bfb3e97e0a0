"""The package's layers, checked on its import graph (every import statement, also those inside functions).

- `pangu_pro/config.py` is the base every stage builds on: it imports no stage module that imports it
  back, and not the inheritance stage at all (the stage owns its section: inherit/config.py).
- The tokenizer tools take what they need from a model as plain values: no tokenizer module but the
  CLI glue (commands.py) imports model/, train/ or another stage.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pangu_pro"
STAGES = ("model", "data", "tokenizer", "train", "rounds", "inherit", "convert", "eval", "bench")
# remap reads and writes weight files through model.weights (issue 15, item 6: to be passed in as well)
TOKENIZER_ALLOWED = {"pangu_pro.tokenizer.remap": {"pangu_pro.model.weights"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        if "hf_modeling" in path.parts:  # PyTorch files shipped with exports, never imported here
            continue
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pangu_pro")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pangu_pro"):
                deps.add(node.module)
        graph[module_name(path)] = deps
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "pangu_pro.config" in graph["pangu_pro.inherit.config"]
    assert "pangu_pro.model.params" in graph["pangu_pro.tokenizer.commands"]  # inside a function


def test_config_imports_no_stage_that_imports_it_back():
    graph = import_graph()
    direct = graph["pangu_pro.config"]
    assert not any(stage_of(m) == "inherit" for m in direct), direct
    for module in direct:
        assert "pangu_pro.config" not in reachable(graph, module) | {module}, f"config.py <-> {module}"


def test_tokenizer_tools_import_no_other_stage():
    graph = import_graph()
    for module, deps in graph.items():
        if stage_of(module) != "tokenizer" or module == "pangu_pro.tokenizer.commands":
            continue
        foreign = {d for d in deps if stage_of(d) not in (None, "tokenizer")} - TOKENIZER_ALLOWED.get(module, set())
        assert not foreign, f"{module} imports {sorted(foreign)}"


# ------------------------------------------------------------------------------ the whole graph

# The layer order (docs/design.md, "Layers"): a module may import its own layer and the layers below.
LAYERS = {
    0: ("io", "digests", "tensors", "compile_log", "runtime", "configtools", "config", "overrides", "progress",
        "plotting", "provenance", "tokens", "runlock", "collective"),
    1: ("model",),
    2: ("data", "tokenizer"),
    3: ("train",),
    4: ("rounds", "inherit", "convert", "eval"),
    5: ("bench", "study", "selfcheck", "launch"),
    6: ("cli", "reference"),
}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    if top == "__init__":
        return 0
    found = [layer for layer, names in LAYERS.items() if top in names]
    assert found, f"{module}: add {top!r} to a layer of LAYERS (tests/test_layering.py) and docs/design.md"
    return found[0]


def package_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a `from pangu_pro.x import y` of a module y counts as y)."""
    graph = import_graph()
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> set[frozenset]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), set(), [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


def test_cycle_finder():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(graph) == {frozenset("abc")}


def test_no_module_imports_a_higher_layer():
    graph = package_graph()
    upward = {(m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m)}
    assert not upward, f"imports up the layers: {sorted(upward)}"


def test_no_import_cycle():
    found = cycles(package_graph())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"

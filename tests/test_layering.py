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

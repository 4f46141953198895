"""The layering of docs/architecture.md: no import cycles, and no module importing a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hftransfer"

# bottom to top, as docs/architecture.md lists them (there top to bottom)
LAYERS = [
    {"data", "manifests", "text_files", "metrics", "transferability", "run_files", "errors", "modeling_hftransfer",
     "domain_gap"},
    {"backbones", "backbone_base", "timm_backbone", "text_backbone", "heads", "preprocessing", "offline", "lora"},
    {"hub", "card", "card_sections", "export", "report", "inference"},
    {"model"},
    {"strategies", "regularizers", "features", "adaptation"},
    {"options", "config"},
    {"checkpoint", "runtime", "loaders", "results", "tracking"},
    {"training"},
    {"trainer", "rank", "scratch", "predict", "auto", "source_only"},
    {"cli", "__main__", "__init__"},
]


def module_imports() -> dict[str, set[str]]:
    """Every hftransfer module -> the hftransfer modules it imports anywhere (function bodies included)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("hftransfer")):
                parts = (node.module or "").split(".")
                name = parts[0] if node.level == 1 else (parts[1] if len(parts) > 1 else "")
                deps |= {name} if name else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("hftransfer.")}
        graph[path.stem] = (deps & modules) - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_hftransfer_modules():
    assert find_cycle(module_imports()) is None


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert set(module_imports()) - layered == set(), "add new modules to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(module_imports()))
def test_no_module_imports_a_higher_layer(module):
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    higher = sorted(dep for dep in module_imports()[module] if level[dep] > level[module])
    assert higher == [], f"{module} (layer {level[module]}) imports higher layers: {higher}"


def test_readme_describes_every_strategy_in_the_words_runs_and_cards_use():
    from hftransfer.strategies import STRATEGIES, describe_strategy

    readme = (PACKAGE.parent / "README.md").read_text()
    for name in STRATEGIES:
        assert f"- `{name}`: {describe_strategy(name)}." in readme, name

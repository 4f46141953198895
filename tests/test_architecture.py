"""The package rules of docs/architecture.md, read from every ``import`` (function-level ones included) with ``ast``.

Rules are per package, so a new module needs no entry here: it takes its package's place.
"""
from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hftransfer"

# bottom to top, as docs/architecture.md lists them; a package imports its own layer's packages or lower ones
LAYERS = [
    {"errors", "files", "records", "version"},  # modules at the package root
    {"hub"},
    {"data"},
    {"models"},
    {"tuning", "adaptation", "evaluation"},
    {"config"},
    {"training"},
    {"runs", "federated"},
    {"cli", "__init__", "__main__"},
]
# packages that never receive the run's whole TrainConfig: they take explicit arguments (training/ converts)
BELOW_TRAINING = {"errors", "files", "records", "version", "hub", "data", "models", "tuning", "adaptation", "evaluation"}
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted name inside hftransfer (``models.lora``, ``errors``) -> file."""
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """The package a module belongs to (a root module is its own room; a package's ``__init__`` its package's)."""
    return module.split(".")[0]


def imported(module: str, path: Path) -> set[str]:
    """The hftransfer modules (dotted, inside hftransfer) that ``module`` imports anywhere."""
    package = module.split(".")[:-1]  # a relative import is relative to the module's package
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "hftransfer":
                target = node.module.split(".")[1:]
            else:
                continue
            out.add(".".join(target) if target else "__init__")
            out |= {".".join(target + [a.name]) for a in node.names}  # `from . import lora` names a module
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("hftransfer.")}
    known = modules()
    resolved = set()
    for name in out:
        if name in known:
            resolved.add(name)
        elif f"{name}.__init__" in known:
            resolved.add(f"{name}.__init__")
    return resolved - {module}


@functools.cache
def graph() -> dict[str, set[str]]:
    return {m: imported(m, p) for m, p in modules().items()}


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
    assert find_cycle(graph()) is None


def test_every_package_has_a_layer():
    layered = set().union(*LAYERS)
    assert {room(m) for m in modules()} - layered == set(), "add the new package to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("module", sorted(modules()))
def test_no_module_imports_a_higher_layer(module):
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    own = level[room(module)]
    higher = sorted(dep for dep in graph()[module] if level[room(dep)] > own)
    assert higher == [], f"{module} (layer {own}) imports higher layers: {higher}"


@pytest.mark.parametrize("module", sorted(m for m in modules() if room(m) == "hub"))
def test_hub_imports_no_model_code(module):
    allowed = {"errors", "files", "records", "hub"}
    assert {room(dep) for dep in graph()[module]} <= allowed


def test_importing_the_hub_package_loads_no_torch():
    code = "import sys, hftransfer.hub, hftransfer.hub.card; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_importing_hftransfer_is_light():
    code = "import sys, hftransfer; print('torch' in sys.modules, sorted(hftransfer.__all__)[:1])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False"


@pytest.mark.parametrize("module", sorted(m for m in modules() if room(m) in BELOW_TRAINING))
def test_layers_below_training_take_no_run_config(module):
    """Below training/ a function takes the values it uses, never the run's whole config (``cfg`` / ``options``)."""
    tree = ast.parse(modules()[module].read_text())
    taking = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
              and {a.arg for a in n.args.args + n.args.kwonlyargs} & {"cfg", "options", "config_obj"}]
    assert taking == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_and_functions_stay_short(module):
    path = modules()[module]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by concern"
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_readme_describes_every_strategy_in_the_words_runs_and_cards_use():
    from hftransfer.tuning.strategies import STRATEGIES, describe_strategy

    readme = (PACKAGE.parent / "README.md").read_text()
    for name in STRATEGIES:
        assert f"- `{name}`: {describe_strategy(name)}." in readme, name

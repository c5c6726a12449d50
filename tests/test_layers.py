"""The package's layers import one way only (docs/architecture.md): no module imports a layer above its own, and no
group of modules imports itself round in a circle.  Imports inside functions count: deferring an import hides a
cycle from Python's start-up, not from a reader."""

import ast
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from setup import MAPPED  # noqa: E402 - which folder holds which package

sys.path.pop(0)

# Bottom first.  A module may import its own layer and the layers below it.
LAYERS = (
    "ditfarm",
    "ditfarm.storage",
    "ditfarm.pipelines",
    "ditfarm.cache",
    "ditfarm.worker",
    "ditfarm.cluster",
    "ditfarm.jobs",
    "ditfarm.tools",
    "ditfarm.commands",
)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    modules = {}
    for package, folder in MAPPED.items():
        for path in (root / folder).rglob("*.py"):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (inside functions too)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
                if node.level
                else node.module
            )
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "pkg.mod.name" -> the module "pkg.mod"
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int:
    """The index of the deepest layer that contains ``module``."""
    return max(i for i, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + "."))


def back_edges(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b} ({LAYERS[layer_of(a)]} must not import {LAYERS[layer_of(b)]})"
        for a, targets in graph.items()
        for b in targets
        if layer_of(b) > layer_of(a)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan's algorithm, iteratively)."""
    index, low, on_stack, stack, groups = {}, {}, set(), [], []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


@pytest.mark.unit
def test_every_package_is_in_a_layer():
    assert set(MAPPED) <= set(LAYERS), f"packages without a layer: {set(MAPPED) - set(LAYERS)}"


@pytest.mark.unit
def test_no_module_imports_a_layer_above_its_own():
    graph = import_graph()
    assert len(graph) > 80 and sum(map(len, graph.values())) > 200  # the walk sees the package
    assert back_edges(graph) == []


@pytest.mark.unit
def test_no_modules_import_each_other_round_in_a_circle():
    assert cycles(import_graph()) == []


@pytest.mark.unit
def test_the_checks_find_a_back_edge_and_a_cycle_inside_functions(tmp_path):
    """The same checks on a copy with one import added inside a function of the models' layer."""
    import shutil

    for folder in MAPPED.values():
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    checks = tmp_path / "pipelines" / "checks.py"
    original = checks.read_text()
    checks.write_text(original + "\n\ndef _late():\n    from ..jobs.driver import RenderJob\n")
    graph = import_graph(tmp_path)
    assert back_edges(graph) == [
        "ditfarm.pipelines.checks -> ditfarm.jobs.driver (ditfarm.pipelines must not import ditfarm.jobs)"
    ]
    checks.write_text(original)
    assert back_edges(import_graph(tmp_path)) == [] and cycles(import_graph(tmp_path)) == []
    base = tmp_path / "pipelines" / "denoise.py"
    base.write_text(base.read_text() + "\n\ndef _late():\n    from .checks import check_limits\n")
    assert cycles(import_graph(tmp_path)) == [["ditfarm.pipelines.checks", "ditfarm.pipelines.denoise"]]

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


def copy_package(dest: Path) -> None:
    """The package's folders under ``dest``, for a check shown failing on a changed copy."""
    import shutil

    for folder in MAPPED.values():
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "weights"))


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
    copy_package(tmp_path)
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


# --- imports inside functions -------------------------------------------------------------------------------------
# A function-local import is allowed only to defer a third-party dependency that the module would not load anyway,
# and says which: `# deferred: torch` on the import or on a comment line right above it.


def _resolved(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The absolute dotted names an import statement names (its module and, for `from`, module.name)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    base = (
        ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".")
        if node.level
        else node.module
    )
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the module's body and its top-level if/try blocks."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try)):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            todo.extend(node.body + node.orelse + getattr(node, "finalbody", []) + getattr(node, "handlers", []))
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return found


def _own(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def third_party(target: str) -> str | None:
    """The distribution root of a non-ditfarm, non-standard-library import, else None."""
    root = target.split(".")[0]
    return None if root == "ditfarm" or root in sys.stdlib_module_names or root == "__future__" else root


def loaded_on_import(root: Path = ROOT) -> dict[str, set[str]]:
    """For each module, the third-party roots that importing it loads (its package __init__s and module-level
    imports, transitively).  Function-local imports are left out: they run later, if at all."""
    modules = module_files(root)
    direct: dict[str, set[str]] = {}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        direct[name], edges[name] = set(), {p for p in _parents(name) if p in modules}
        for node in _module_level_imports(ast.parse(path.read_text(), str(path))):
            for target in _resolved(name, path, node):
                if third_party(target):
                    direct[name].add(third_party(target))
                elif (own := _own(target, modules)) and own != name:
                    edges[name] |= {own, *(p for p in _parents(own) if p in modules)}
    loaded: dict[str, set[str]] = {}

    def visit(name: str) -> set[str]:  # the graph has no cycles (the test above), so plain memoised recursion
        if name not in loaded:
            loaded[name] = set(direct[name])
            for other in edges[name] - {name}:
                loaded[name] |= visit(other)
        return loaded[name]

    for name in modules:
        visit(name)
    return loaded


def function_local_imports(root: Path = ROOT):
    """(module, path, line, statement node, the deferred comment or None) for every import inside a function."""
    modules = module_files(root)
    for name, path in modules.items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                comment, row = None, node.lineno - 1
                candidates = lines[node.lineno - 1 : node.end_lineno]
                while row > 0 and lines[row - 1].strip().startswith("#"):  # a comment block right above
                    row -= 1
                    candidates.append(lines[row])
                for text in candidates:
                    if "# deferred:" in text:
                        comment = text.split("# deferred:", 1)[1].strip().split()[0].strip(",;.()")
                        break
                yield name, path, node.lineno, node, comment


def deferral_problems(root: Path = ROOT) -> list[str]:
    """Function-local imports that defer nothing: no `# deferred: DEP` comment, or DEP is not what the import adds
    to what the module loads anyway."""
    modules = module_files(root)
    loaded = loaded_on_import(root)
    problems = []
    for name, path, line, node, comment in function_local_imports(root):
        where = f"{path.relative_to(root)}:{line}"
        adds = set()
        for target in _resolved(name, path, node):
            if third_party(target):
                adds.add(third_party(target))
            elif own := _own(target, modules):
                adds |= loaded[own]
        adds -= loaded[name]
        if comment is None:
            problems.append(f"{where}: an import inside a function without `# deferred: DEP`")
        elif comment not in adds:
            problems.append(f"{where}: `# deferred: {comment}` but the import adds {sorted(adds) or 'nothing'}")
    return problems


@pytest.mark.unit
def test_imports_inside_functions_defer_a_dependency_and_say_which():
    assert sum(1 for _ in function_local_imports()) > 10  # the walk sees them
    assert deferral_problems() == []


@pytest.mark.unit
def test_the_deferral_check_finds_an_import_that_defers_nothing(tmp_path):
    copy_package(tmp_path)
    checks = tmp_path / "pipelines" / "checks.py"
    checks.write_text(
        checks.read_text()
        + "\n\ndef _late():\n    import json\n\n\ndef _later():\n    import json  # deferred: json\n"
        + "\n\ndef _lazy():\n    import diffusers  # deferred: diffusers\n"
    )
    problems = [p for p in deferral_problems(tmp_path) if p.startswith("pipelines/checks.py")]
    lines = len(checks.read_text().splitlines())
    assert problems == [
        f"pipelines/checks.py:{lines - 8}: an import inside a function without `# deferred: DEP`",
        f"pipelines/checks.py:{lines - 4}: `# deferred: json` but the import adds nothing",
    ]


# --- one storage layer --------------------------------------------------------------------------------------------
STORAGE_ONLY = (
    "boto3",
    "botocore",
    "pyarrow.fs",
    "S3Store",
    "LocalStore",
    "S3ConditionalObject",
    "LocalConditionalFile",
)


def storage_reaches(root: Path = ROOT) -> list[str]:
    """Places outside ditfarm.storage that talk to object storage themselves (a client library, pyarrow's
    filesystems) or name a store's class or a store's private member: every read and write goes through the
    storage layer's interface instead."""
    found = []
    for name, path in module_files(root).items():
        if name.startswith("ditfarm.storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _resolved(name, path, node) + [alias.name for alias in node.names]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute) and node.attr in ("_key", "_client"):  # a store's insides
                found.append(f"{path.relative_to(root)}:{node.lineno}: {node.attr}")
                continue
            else:
                continue
            for text in names:
                if any(text == s or text.startswith(s + ".") or text.endswith("." + s) for s in STORAGE_ONLY):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {text}")
    return sorted(set(found))


@pytest.mark.unit
def test_only_the_storage_layer_talks_to_object_storage():
    assert storage_reaches() == []


@pytest.mark.unit
def test_the_storage_check_finds_a_store_reached_around(tmp_path):
    copy_package(tmp_path)
    report = tmp_path / "jobs" / "report.py"
    report.write_text(
        report.read_text()
        + "\n\ndef _peek(store):\n    import boto3  # deferred: boto3\n\n"
        + "    return isinstance(store, S3Store) and store._key('x')\n"
    )
    lines = len(report.read_text().splitlines())
    assert storage_reaches(tmp_path) == [
        f"jobs/report.py:{lines - 2}: boto3",
        f"jobs/report.py:{lines}: S3Store",
        f"jobs/report.py:{lines}: _key",
    ]

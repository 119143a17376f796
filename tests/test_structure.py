"""The package's import structure, read from the source: every import counts (module level or inside a function,
which only binds later), none may close a cycle inside bench; the spec and the run-dir layout are at the bottom
(they import nothing of bench), and bench/measure (how things are measured) imports nothing else of bench."""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules a file imports anywhere in it, with the packages whose __init__ such an import runs
    (those above the target that are not above the importer, which is already being imported)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    for target in list(found):
        found |= {p for p in (".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1))
                  if p not in own_parents}
    return {m for m in found if m in modules} - {name}


def import_graph(root: Path, package: str = "bench") -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    files = sorted((root / package).rglob("*.py"))
    modules = {_module_name(f, root) for f in files}
    return {_module_name(f, root): _imports(f, _module_name(f, root), modules) for f in files}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        return err.args[1]
    return None


def test_no_import_cycles():
    graph = import_graph(ROOT)
    assert {"bench.spec", "bench.training", "bench.tasks.common"} <= graph["bench.tasks.supervised"]
    found = cycle(graph)
    assert found is None, f"import cycle: {' -> '.join(found)}"


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    package = tmp_path / "bench"
    (package / "tasks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "spec.py").write_text("def check(value):\n    from .tasks import TASKS\n    return value in TASKS\n")
    (package / "tasks" / "__init__.py").write_text("from .train import TASKS\n")
    (package / "tasks" / "train.py").write_text("from ..spec import check\nTASKS = {}\n")
    found = cycle(import_graph(tmp_path))
    assert found is not None and "bench.spec" in found and "bench.tasks" in found


@pytest.mark.parametrize("module", ["bench.spec", "bench.paths"])
def test_the_bottom_layer_imports_nothing_of_bench(module):
    assert import_graph(ROOT)[module] == set()


def test_measure_imports_nothing_else_of_bench():
    for module, imports in import_graph(ROOT).items():
        if module.startswith("bench.measure"):
            assert all(target.startswith("bench.measure") for target in imports), (module, imports)

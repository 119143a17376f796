"""The package's import structure, read from the source: no module-level import cycles inside bench, and
bench/measure (how things are measured) imports nothing else of bench."""

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The bench modules a file imports at module level (imports inside functions bind late and are left out)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in modules}


def _graph() -> dict[str, set[str]]:
    """module -> the bench modules it imports at module level."""
    files = sorted((ROOT / "bench").rglob("*.py"))
    modules = {_module_name(f) for f in files}
    return {_module_name(f): _top_level_imports(f, modules) - {_module_name(f)} for f in files}


def test_no_import_cycles():
    graph = _graph()
    assert {"bench.spec", "bench.tasks.common"} <= graph["bench.tasks.accuracy"]  # the reader sees imports
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        raise AssertionError(f"import cycle: {' -> '.join(err.args[1])}") from None


def test_measure_imports_nothing_else_of_bench():
    for module, imports in _graph().items():
        if module.startswith("bench.measure"):
            assert all(target.startswith("bench.measure") for target in imports), (module, imports)

"""The layering: pipeline/ is the pure core (no I/O library, nothing from the shell or
the models), and no module imports itself in a circle, however far round.

Every import counts: at module level, inside functions (lazy imports), under
TYPE_CHECKING, and names handed to ``importlib.import_module``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "agents", "models", "streamserve")
FORBIDDEN = {"faust", "aiokafka", "prometheus_client", "mode", "agents", "models", "streamserve"}
PIPELINE = ROOT / "pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a import b`` yields a.b when that is a
    module, else a)."""
    names = set()
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" \
        else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.Constant):
            names.add(node.args[0].value)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" \
                and node.args and isinstance(node.args[0], ast.JoinedStr):
            head = node.args[0].values[0]
            if isinstance(head, ast.Constant):
                names.add(head.value.rstrip("."))
    return names


def project_imports(path: Path) -> set[str]:
    """The project's modules that ``path`` imports, itself and its own package left out."""
    me = module_name(path)
    found = {name for name in imports(path) if name in MODULES}
    return {name for name in found if name != me and not me.startswith(name + ".")}


@pytest.mark.parametrize("path", sorted(PIPELINE.rglob("*.py")), ids=lambda p: p.name)
def test_pipeline_module_imports_no_io_library_and_nothing_of_the_shell(path):
    imported = {name.split(".")[0] for name in imports(path)}
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"


def test_no_module_imports_itself_in_a_circle():
    graph = {name: project_imports(path) for name, path in MODULES.items()}
    cycles = [sorted(c) for c in strongly_connected(graph) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    assert sorted(map(sorted, strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"},
                                                  "d": {"a"}}))) == [["a", "b", "c"], ["d"]]


def test_there_are_modules_to_check():
    assert len(list(PIPELINE.rglob("*.py"))) >= 5 and len(MODULES) >= 50


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's strongly connected components of ``graph`` (node -> the nodes it points at)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            components.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return components

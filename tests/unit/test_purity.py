"""pipeline/ is the pure core: it must not import the I/O shell's libraries."""

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"faust", "aiokafka", "prometheus_client", "mode", "agents"}
PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


@pytest.mark.parametrize("path", sorted(PIPELINE.rglob("*.py")), ids=lambda p: p.name)
def test_pipeline_module_imports_no_io_library(path):
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {imported & FORBIDDEN}"


def test_there_are_pipeline_modules_to_check():
    assert len(list(PIPELINE.rglob("*.py"))) >= 5

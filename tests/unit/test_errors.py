"""One root error type: every exception class streamserve defines derives from
``pipeline.errors.StreamserveError``, and the tree in its docstring names each one under
its streamserve base."""

import importlib
import inspect
import pkgutil
import re

import pytest

from pipeline.errors import CheckFailed, StreamserveError, UsageError

PACKAGES = ("pipeline", "agents", "models")
_ENTRY = re.compile(r"^(?P<indent>[ |]*)\* (?P<name>\w+)")


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of PACKAGES, by name (imports them all)."""
    found: dict[str, type[BaseException]] = {}
    for package in PACKAGES:
        root = importlib.import_module(package)
        names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, package + ".")]
        for name in names:
            if name.endswith(".__main__"):  # running it is what importing it does
                continue
            module = importlib.import_module(name)
            for obj in vars(module).values():
                if (inspect.isclass(obj) and issubclass(obj, BaseException)
                        and obj.__module__ == name):
                    assert obj.__name__ not in found or found[obj.__name__] is obj, (
                        f"two exception classes named {obj.__name__}: name them apart")
                    found[obj.__name__] = obj
    return found


EXCEPTIONS = defined_exceptions()


def tree() -> list[tuple[str, str | None]]:
    """(name, parent name) of each entry of StreamserveError's docstring tree."""
    lines = inspect.getdoc(StreamserveError).splitlines()
    start = lines.index("StreamserveError")
    entries: list[tuple[str, str | None]] = [("StreamserveError", None)]
    stack: list[tuple[int, str]] = [(-1, "StreamserveError")]
    for line in lines[start + 1:]:
        match = _ENTRY.match(line)
        if match is None:
            if not line.strip():
                break
            continue
        depth = len(match["indent"])
        while stack[-1][0] >= depth:
            stack.pop()
        entries.append((match["name"], stack[-1][1]))
        stack.append((depth, match["name"]))
    return entries


def test_the_walk_finds_the_exceptions():
    assert {"ControlError", "ConfigError", "RegistryError", "SignatureError", "BenchError",
            "KafkaAccessError", "UnknownModelError", "StreamClientError"} <= EXCEPTIONS.keys()


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_every_exception_derives_from_streamserve_error(name):
    cls = EXCEPTIONS[name]
    assert issubclass(cls, StreamserveError), (
        f"{cls.__module__}.{name} must derive from pipeline.errors.StreamserveError (keep its "
        f"other bases: class {name}(StreamserveError, {cls.__bases__[-1].__name__}))")


def test_the_docstring_tree_names_every_exception_under_its_base():
    entries = tree()
    named = [name for name, _ in entries]
    assert len(named) == len(set(named)), "an exception is named twice in the tree"
    missing = sorted(EXCEPTIONS.keys() - set(named))
    assert not missing, f"add to StreamserveError's docstring tree: {', '.join(missing)}"
    stale = sorted(set(named) - EXCEPTIONS.keys())
    assert not stale, f"the tree names exceptions that do not exist: {', '.join(stale)}"
    for name, parent in entries[1:]:
        assert issubclass(EXCEPTIONS[name], EXCEPTIONS[parent]), f"{name} is not a {parent}"


def test_standard_bases_are_kept_for_callers_that_catch_them():
    assert issubclass(EXCEPTIONS["ControlError"], ValueError)
    assert issubclass(EXCEPTIONS["ConfigError"], ValueError)
    assert issubclass(EXCEPTIONS["PredictionTimeout"], TimeoutError)
    assert issubclass(EXCEPTIONS["KafkaAccessError"], RuntimeError)
    assert issubclass(EXCEPTIONS["UnknownModelError"], LookupError)
    assert issubclass(UsageError, ValueError)


def test_exit_codes():
    assert StreamserveError.exit_code == 2 and UsageError.exit_code == 2
    assert CheckFailed.exit_code == 1
    assert EXCEPTIONS["BenchError"].exit_code == 1 and EXCEPTIONS["SignatureError"].exit_code == 1
    assert EXCEPTIONS["RegistryError"].exit_code == 2 and EXCEPTIONS["ControlError"].exit_code == 2

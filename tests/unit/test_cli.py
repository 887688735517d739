"""The `streamserve` parser: one `register(commands)` per command group module, every
command's --help, the one error handler, and the declarative lifecycle commands."""

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from agents.cli import lifecycle
from agents.cli.main import COMMAND_GROUPS, build_parser, handle, main
from pipeline import routing
from pipeline.errors import CheckFailed
from pipeline.routing import ControlError

ROOT = Path(__file__).resolve().parents[2]
NOT_GROUPS = {"__init__", "__main__", "main", "parsing"}


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command and group of ``parser``, as the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from command_paths(sub, (*prefix, name))


PATHS = list(command_paths(build_parser()))


def test_every_command_group_module_is_listed_and_registers_alike():
    modules = {p.stem for p in (ROOT / "agents" / "cli").glob("*.py")} - NOT_GROUPS
    assert {m.__name__.rsplit(".", 1)[1] for m in COMMAND_GROUPS} == modules
    for module in COMMAND_GROUPS:
        assert list(inspect.signature(module.register).parameters) == ["commands"], module


def test_the_commands_the_readme_documents_are_there():
    top = {path[0] for path in PATHS}
    assert top >= {"broker", "models", "keys", "deploy", "canary", "shadow", "promote",
                   "rollback", "fallback", "batching", "routes", "audit", "worker", "produce",
                   "consume", "drift", "verify", "demo", "bench", "replay", "ops", "acl",
                   "quota", "status"}
    assert ("models", "verify") in PATHS and ("drift", "report") in PATHS
    assert ("broker", "start") in PATHS and ("replay", "gate") in PATHS


@pytest.mark.parametrize("path", [(), *PATHS], ids=lambda p: " ".join(p) or "streamserve")
def test_every_help_exits_0(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    assert "usage: streamserve" in capsys.readouterr().out


def test_help_imports_neither_jax_nor_faust():
    code = ("import sys; from agents.cli.main import build_parser; build_parser().format_help(); "
            "heavy = {'jax', 'faust', 'aiokafka'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_fallback_clear_parses():
    args = build_parser().parse_args(["fallback", "iris", "--clear"])
    assert (args.model, args.version, args.clear) == ("iris", None, True)
    args = build_parser().parse_args(["fallback", "iris", "1"])
    assert (args.model, args.version, args.clear) == ("iris", "1", False)


@pytest.mark.parametrize("argv", [["fallback", "iris"], ["fallback", "iris", "1", "--clear"]])
def test_fallback_needs_a_version_or_clear(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamserve: error: give either VERSION or --clear")
    assert "streamserve fallback iris --clear" in err and len(err.splitlines()) == 1


# ---- the one handler ------------------------------------------------------------------------


def failing(error: BaseException):
    def run(settings, args):
        raise error
    return run


@pytest.mark.parametrize("error, status", [
    (ControlError("iris is not deployed yet"), 2),
    (OSError(2, "No such file or directory"), 2),
    (CheckFailed("1 of 2 versions of iris fail verification"), 1),
])
def test_the_handler_prints_one_line_and_exits_with_the_errors_code(error, status, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(lifecycle, "_routes", failing(error))
    assert main(["routes"]) == status
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"streamserve: error: {error}\n"


def test_a_bug_is_a_traceback_not_a_user_error(monkeypatch):
    monkeypatch.setattr(lifecycle, "_routes", failing(KeyError("bug")))
    with pytest.raises(KeyError):
        main(["routes"])
    with pytest.raises(ZeroDivisionError):
        handle(ZeroDivisionError(), None)


def test_python_dash_m_agents_cli_keeps_the_exit_status():
    run = subprocess.run([sys.executable, "-m", "agents.cli", "fallback", "iris"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("streamserve: error: ")
    assert subprocess.run([sys.executable, "-m", "agents.cli", "--help"], cwd=ROOT,
                          capture_output=True).returncode == 0


# ---- declarative lifecycle commands -----------------------------------------------------------


@pytest.fixture
def control(monkeypatch):
    """The control topic as one spec in memory: ``control.spec`` now, ``control.written``
    the (action, spec) changes written."""
    import agents.kafka.control as kafka_control

    class Control:
        spec = routing.deploy(None, "iris", "1")
        written: list = []

    async def change(settings, model, transition, *, action, source, reason="",
                     expected_revision=None):
        new = transition(Control.spec)
        if not routing.unchanged(Control.spec, new):  # as agents.kafka.control.change
            Control.written.append((action, new))
            Control.spec = new
        return new

    monkeypatch.setattr(kafka_control, "change", change)
    monkeypatch.setattr(kafka_control, "check_servable", lambda settings, model, version: None)
    Control.written = []
    return Control


def test_deploying_the_stable_version_again_succeeds_and_writes_nothing(control, capsys):
    assert main(["deploy", "iris", "1"]) == 0
    assert capsys.readouterr().out == "iris  stable 1  rev 1  (unchanged)\n"
    assert control.written == []
    assert main(["deploy", "iris", "2"]) == 0
    assert capsys.readouterr().out == "iris  stable 2  rev 2\n"
    assert [action for action, _ in control.written] == ["deploy"]


@pytest.mark.parametrize("argv", [
    ["fallback", "iris", "--clear"],
    ["shadow", "iris", "3", "--off"],
    ["batching", "iris"],
    ["rollback", "iris", "1"],
])
def test_commands_whose_state_holds_change_nothing(argv, control, capsys):
    assert main(argv) == 0
    assert capsys.readouterr().out.endswith("(unchanged)\n") and control.written == []


def test_fallback_clear_removes_the_fallback_and_is_recorded(control, capsys):
    assert main(["fallback", "iris", "0"]) == 0
    assert main(["fallback", "iris", "0"]) == 0
    assert main(["fallback", "iris", "--clear"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["iris  stable 1  fallback 0  rev 2", "iris  stable 1  fallback 0  rev 2  (unchanged)",
                   "iris  stable 1  rev 3"]
    assert [action for action, _ in control.written] == ["fallback", "fallback_clear"]


def test_a_refused_canary_names_the_command_that_clears_the_fallback(control, capsys):
    assert main(["fallback", "iris", "0"]) == 0
    assert main(["canary", "iris", "0", "--weight", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "streamserve fallback iris --clear" in err and "set_fallback" not in err
    assert len(err.splitlines()) == 1


def test_only_main_prints_errors_and_only_parsing_adds_parsers():
    for path in ROOT.glob("agents/**/*.py"):
        text = path.read_text()
        if path.name != "main.py":
            assert "streamserve: error" not in text, f"{path}: raise a StreamserveError instead"
        if path.parent.name == "cli" and path.name != "parsing.py":
            assert ".add_parser(" not in text, f"{path}: use agents.cli.parsing.command/group"

"""What every command group module of ``agents/cli`` builds its part of the parser with.

Each group module has one ``register(commands)``: it adds its commands (or its group and
the group's actions) to ``commands``, the subparsers of ``streamserve``, and sets each
command's ``run(settings, args) -> exit status``. ``agents.cli.main`` lists the modules.
A command that meets a user mistake raises a ``StreamserveError`` (or ``OSError``); main
prints it as one line and exits with its ``exit_code``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pipeline.config import Settings
from pipeline.errors import UsageError

Run = Callable[[Settings, argparse.Namespace], int | None]
Commands = argparse._SubParsersAction


def command(commands: Commands, name: str, run: Run, help: str) -> argparse.ArgumentParser:
    """The command ``name`` among ``commands``, running ``run``; ``help`` in the list of
    commands and atop its own ``--help``."""
    sub = commands.add_parser(name, help=help, description=help)
    sub.set_defaults(run=run)
    return sub


def group(commands: Commands, name: str, help: str, description: str | None = None) -> Commands:
    """The command group ``name`` (``streamserve NAME ACTION``): the subparsers its actions
    are added to with ``command``."""
    parser = commands.add_parser(name, help=help, description=description or help)
    return parser.add_subparsers(title="actions", metavar="ACTION", required=True)


def check_writable(path: Path | None, option: str) -> None:
    """Refuse an output file whose folder is missing, before any slow work (reading Kafka)."""
    if path is not None and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: folder {path.parent} does not exist; "
                         f"create it (mkdir -p) or choose another {option} path")

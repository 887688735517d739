"""The ``streamserve`` command line. User mistakes end in one line on stderr, never a traceback.

Each command group is a module of ``agents/cli`` with one ``register(commands)``
(``agents.cli.parsing``); ``COMMAND_GROUPS`` lists them in the order ``--help`` shows
them. Commands import their heavy dependencies (JAX, Faust, aiokafka) when they run, so
``streamserve --help`` stays quick.

One handler ends every command: a ``StreamserveError`` (``pipeline.errors``) or an
``OSError`` prints ``streamserve: error: MESSAGE`` and exits with the error's
``exit_code`` (2, a mistake to fix; 1, a check that failed); a Kafka refusal no command
put in its own words prints who may do it instead (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agents.cli import (
    acl,
    broker,
    dev,
    drift,
    lifecycle,
    models,
    ops,
    quality,
    quota,
    replay,
    serving,
    status,
    topics,
    verify,
)
from pipeline.config import Settings
from pipeline.errors import StreamserveError

COMMAND_GROUPS = (broker, topics, models, lifecycle, serving, drift, quality, verify, dev, replay, ops,
                  acl, quota, status)
"""The modules whose ``register(commands)`` make up ``streamserve``, in ``--help`` order."""

USER_ERROR = 2  # the exit status of an OSError, and StreamserveError's default


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return USER_ERROR
    settings = None
    try:
        settings = Settings.from_env()
        return args.run(settings, args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        return handle(e, settings)


def handle(error: Exception, settings: Settings | None) -> int:
    """The one handler: ``error`` as one line on stderr, and the exit status; anything
    else than a user error is raised again (a traceback: a bug to report)."""
    if isinstance(error, StreamserveError | OSError):
        message, status = str(error), getattr(error, "exit_code", USER_ERROR)
    else:
        from agents.kafka.connect import REFUSALS, refused

        if settings is None or not isinstance(error, REFUSALS):
            raise error
        # A refusal no command put in its own words: who may do it instead.
        message, status = str(refused(settings, error)), USER_ERROR
    print(f"streamserve: error: {message}", file=sys.stderr)
    return status


def build_parser() -> argparse.ArgumentParser:
    settings_help = "\n".join(
        f"\n {section}: {about}\n" + "\n".join(f"  {env} (default {default}): {doc}"
                                                for env, default, doc in rows)
        for section, about, rows in Settings.documentation_by_section())
    parser = argparse.ArgumentParser(
        prog="streamserve", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Kafka-native model serving: Faust workers micro-batching JSON requests "
                    "into JIT-compiled JAX models.",
        epilog=f"settings (environment variables):\n{settings_help}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())

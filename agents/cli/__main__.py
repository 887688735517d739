"""``python -m agents.cli``: the ``streamserve`` command."""

from agents.cli.main import main

main()

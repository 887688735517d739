"""``python -m agents.cli``: the ``streamserve`` command."""

import sys

from agents.cli.main import main

sys.exit(main())

"""Why a model file cannot be registered; each message names the problem and the fix."""

from __future__ import annotations

import importlib
from types import ModuleType

from pipeline.errors import StreamserveError


class ConversionError(StreamserveError, ValueError):
    """A model file or object that streamserve cannot serve as it is."""


class MissingExtraError(ConversionError, ImportError):
    """The library a model format needs at registration is not installed."""


def need(module: str) -> ModuleType:
    """Import ``module`` (a library of the ``models`` extra), or say what installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"registering this model needs {module}, which is not installed: run "
            f"pip install -e '.[models]' (or scripts/setup.sh, which installs it)") from None

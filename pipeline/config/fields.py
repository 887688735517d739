"""How a setting is declared, read from its environment variable and checked.

A section is a frozen dataclass whose fields are declared with ``setting`` (or ``secret``):
the field's metadata names its environment variable and documents it, so the variable,
its default and its meaning sit in one place. ``derived`` fields are computed from the
others once, in the section's ``__post_init__``. A ``Literal`` field holds only one of its
choices; the environment may spell them in any case.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Mapping
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pipeline.errors import StreamserveError


class ConfigError(StreamserveError, ValueError):
    """A setting has a value that cannot work; the message names the variable."""


def setting(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


def secret(env: str, doc: str) -> Any:
    """A secret: read from ``env`` or from the file ``env``_FILE names; never shown."""
    return field(default="", repr=False,
                 metadata={"env": env, "doc": f"{doc} Or {env}_FILE: a file holding it.",
                           "secret": True})


def derived() -> Any:
    """A field computed from the settings in ``__post_init__``, not read from the environment."""
    return field(default=None, init=False, repr=False, compare=False)


def derive(section: object, name: str, value: Any) -> None:
    object.__setattr__(section, name, value)  # frozen: only __post_init__ sets derived fields


def check(ok: bool, env: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{env} {message}")


def env_fields(cls: type) -> list[Field]:
    """The fields of a section read from the environment (all but the derived ones)."""
    return [f for f in fields(cls) if "env" in f.metadata]


def env_of(cls: type, name: str) -> str:
    return next(f.metadata["env"] for f in env_fields(cls) if f.name == name)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def choices(cls: type, name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field may take (empty for other fields)."""
    hint = _hints(cls)[name]
    return get_args(hint) if get_origin(hint) is Literal else ()


def check_choices(section: object) -> None:
    """Refuse a ``Literal`` field's value that is not one of its choices, naming the variable."""
    cls = type(section)
    for f in env_fields(cls):
        options, value = choices(cls, f.name), getattr(section, f.name)
        check(not options or value in options, f.metadata["env"],
              f"must be one of {', '.join(options)}, got {value!r}")


_BOOLEANS = {"on": True, "true": True, "1": True, "yes": True,
             "off": False, "false": False, "0": False, "no": False}


def read_section(cls: type, environ: Mapping[str, str]) -> Any:
    """A section from the environment: each set variable parsed as its field's type."""
    values: dict[str, Any] = {}
    for f in env_fields(cls):
        env = f.metadata["env"]
        raw = environ.get(env)
        if not raw and f.metadata.get("secret") and environ.get(f"{env}_FILE"):
            raw = _read_secret(f"{env}_FILE", Path(environ[f"{env}_FILE"]))
        if raw is not None and raw != "":
            values[f.name] = _parse(env, _hints(cls)[f.name], choices(cls, f.name), raw)
    return cls(**values)


def _parse(env: str, hint: Any, options: tuple[str, ...], raw: str) -> Any:
    if options:  # any case: sasl_ssl is SASL_SSL
        match = [option for option in options if option.lower() == raw.strip().lower()]
        check(bool(match), env, f"must be one of {', '.join(options)}, got {raw!r}")
        return match[0]
    if hint is bool:
        if raw.lower() not in _BOOLEANS:
            raise ConfigError(f"{env}={raw!r} must be on or off")
        return _BOOLEANS[raw.lower()]
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} must be a number, e.g. 0.05") from None
    if hint is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{env}={raw!r} must be a whole number") from None
    if hint is Path or Path in get_args(hint):
        return Path(raw)
    return raw


def _read_secret(env: str, path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"{env}={path} cannot be read ({e.strerror}); point it at the "
                          "file that holds the secret") from None

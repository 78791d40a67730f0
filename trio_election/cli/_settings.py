"""Settings from the environment and a TOML file, beneath the command line.

Every long option of every command can also be set as
``TRIO_ELECTION_<OPTION>`` (``--data-dir`` is ``TRIO_ELECTION_DATA_DIR``) or
in the TOML file named by ``--config`` (or ``TRIO_ELECTION_CONFIG``): a key at
the top applies to every command that has the option, a key in a table named
after the command (``[node]``, ``[campaign]``, ``[member]``) to that command
only. Precedence, highest first: the command line, the environment, the
file's command table, the file's top level, the built-in default.

They become the parser's defaults, so argparse still checks and converts
every value as if it had been typed, and names the option when it is wrong.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._common import UsageError

ENV_PREFIX = "TRIO_ELECTION_"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def take_config(argv: list[str]) -> tuple[Path | None, list[str]]:
    """Remove ``--config FILE`` (anywhere before ``--``) from ``argv``."""
    rest: list[str] = []
    path = os.environ.get(f"{ENV_PREFIX}CONFIG") or None
    words = iter(argv)
    for word in words:
        if word == "--config":
            path = next(words, None)
            if path is None:
                raise UsageError("--config needs a file")
        elif word.startswith("--config="):
            path = word.partition("=")[2]
        else:
            rest.append(word)
    return (Path(path) if path else None), rest


def load_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise UsageError(f"--config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path} is not valid TOML: {exc}") from None


def apply(parser: argparse.ArgumentParser, file: Mapping[str, Any], source: str = "") -> None:
    """Set the defaults of every command's options from the environment and ``file``."""
    commands = dict(_commands(parser))
    known: set[str] = set()
    for path, command in commands.items():
        table = _table(file, path, source)
        for action in command._actions:
            option = next((o[2:] for o in action.option_strings if o.startswith("--")), None)
            if option is None or option in ("help", "version"):
                continue
            known.add(option)
            value = _lookup(option, table, file)
            if value is not None:
                action.default = _as_default(action, value, option)
                action.required = False
    unknown = [
        key
        for key, value in file.items()
        if not isinstance(value, dict) and key.replace("_", "-") not in known
    ]
    unknown += [
        f"{name}.{key}"
        for name, value in file.items()
        if isinstance(value, dict)
        for key in value
        if not isinstance(value[key], dict) and key.replace("_", "-") not in known
    ]
    tables = {name for name, value in file.items() if isinstance(value, dict)}
    unknown += [f"[{name}]" for name in tables - {p.split(" ")[0] for p in commands}]
    if unknown:
        raise UsageError(f"--config {source}: unknown settings: {', '.join(sorted(unknown))}")


def _commands(parser: argparse.ArgumentParser, path: str = "") -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                sub_path = f"{path} {name}".strip()
                yield sub_path, sub
                yield from _commands(sub, sub_path)


def _table(file: Mapping[str, Any], path: str, source: str) -> Mapping[str, Any]:
    table: Any = file
    for name in path.split(" "):
        table = table.get(name, {}) if isinstance(table, Mapping) else {}
    if not isinstance(table, Mapping):
        raise UsageError(f"--config {source}: [{path}] must be a table")
    return table if path else {}


def _lookup(option: str, table: Mapping[str, Any], file: Mapping[str, Any]) -> Any:
    env = os.environ.get(ENV_PREFIX + option.replace("-", "_").upper())
    if env is not None:
        return env
    for source in (table, file):
        for key in (option, option.replace("-", "_")):
            if key in source and not isinstance(source[key], dict):
                return source[key]
    return None


def _as_default(action: argparse.Action, value: Any, option: str) -> Any:
    if isinstance(action, argparse._StoreTrueAction):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise UsageError(f"--{option}: {value!r} is not true or false")
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    # A string default is converted and checked by the option's type, as if typed.
    return value if isinstance(value, str) else str(value)

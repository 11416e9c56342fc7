"""Settings from flags, ``BRIDGE_*`` environment variables and an optional TOML file.

Precedence, lowest first: built-in defaults, the TOML file (``--config``), the environment, the flags.
One declarative :class:`Option` table per command keeps the three spellings of a setting in step:
flag ``--resync-interval``, env ``BRIDGE_RESYNC_INTERVAL``, TOML key ``resync_interval``.
Every bad value raises :class:`~bridge.errors.UserError` naming the setting and where it came from.
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.errors import UserError

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """``"30s"``, ``"5m"``, ``"250ms"``, ``"1h"`` or plain seconds, as seconds (> 0)."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 250ms, 1h)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return value


def parse_positive_int(text: str) -> int:
    """A whole number > 0."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise ValueError(f"{text!r} must be greater than zero")
    return value


def parse_bool(text: str) -> bool:
    """true/false, yes/no, 1/0, on/off."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def parse_secret_key_values(text: str) -> dict[str, str]:
    """:func:`parse_key_values` for settings that may hold secrets: an error never echoes the text."""
    try:
        return parse_key_values(text)
    except ValueError:
        raise ValueError("an item is not key=value (the text is not shown: it may hold a secret)") from None


def parse_key_values(text: str) -> dict[str, str]:
    """``key=value`` pairs separated by commas or newlines (librdkafka settings)."""
    out: dict[str, str] = {}
    for raw in re.split(r"[,\n]", text):
        item = raw.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True)
class Option:
    """One setting, spelled as a flag, an environment variable and a TOML key."""

    name: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    metavar: str | None = None
    repeatable_kv: bool = False
    """For librdkafka pass-through: ``--kafka-config k=v`` may repeat and the values merge."""
    table: str | None = None
    """For a repeatable_kv option: the config file's table of its keys (``kafka_config``: ``[kafka]``)."""

    @property
    def file_table(self) -> str | None:
        if self.table is not None:
            return self.table
        return "kafka" if self.name == "kafka_config" else None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "BRIDGE_" + self.name.upper()


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """Add ``--config`` and each option's flag; defaults are resolved later by :func:`resolve`."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with settings (keys as the flags, with underscores); env BRIDGE_CONFIG",
    )
    for opt in options:
        default_txt = "" if opt.default is None else f" (default: {_show(opt.default)})"
        kwargs: dict[str, Any] = {
            "dest": opt.name,
            "metavar": opt.metavar or opt.name.upper(),
            "help": f"{opt.help}{default_txt}; env {opt.env}",
            "default": None,
        }
        if opt.repeatable_kv:
            kwargs["action"] = "append"
        parser.add_argument(opt.flag, **kwargs)


def resolve(
    args: argparse.Namespace,
    options: Sequence[Option],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Merge defaults, TOML, environment and flags into parsed values, keyed by option name."""
    env = os.environ if environ is None else environ
    config_path = getattr(args, "config", None) or env.get("BRIDGE_CONFIG")
    file_values = _read_toml(Path(config_path)) if config_path else {}
    known = {o.name for o in options}
    tables = {o.file_table for o in options if o.repeatable_kv and o.file_table} | {"kafka"}
    unknown = sorted(set(file_values) - known - tables)
    if unknown:
        raise UserError(f"config file {config_path}: unknown setting(s) {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for opt in options:
        out[opt.name] = _resolve_one(opt, args, env, file_values, config_path)
    return out


def _resolve_one(
    opt: Option,
    args: argparse.Namespace,
    env: Mapping[str, str],
    file_values: Mapping[str, Any],
    config_path: str | None,
) -> Any:
    flag_value = getattr(args, opt.name, None)
    if opt.repeatable_kv:
        merged: dict[str, str] = {}
        table = file_values.get(opt.file_table) if opt.file_table else None
        if isinstance(table, dict):
            merged.update({str(k): str(v) for k, v in table.items()})
        parse = opt.parse if opt.parse is not str else parse_key_values
        for source, text in _kv_sources(opt, file_values, env, flag_value, config_path):
            try:
                merged.update(parse(text))
            except ValueError as exc:
                raise UserError(f"{opt.name} from {source}: {exc}") from None
        return merged
    if flag_value is not None:
        return _parse(opt, str(flag_value), f"flag {opt.flag}")
    if opt.env in env:
        return _parse(opt, env[opt.env], f"environment variable {opt.env}")
    if opt.name in file_values:
        value = file_values[opt.name]
        return _parse(opt, str(value).lower() if isinstance(value, bool) else str(value),
                      f"config file {config_path} key {opt.name}")
    return opt.default


def _kv_sources(
    opt: Option,
    file_values: Mapping[str, Any],
    env: Mapping[str, str],
    flag_value: list[str] | None,
    config_path: str | None,
) -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    if isinstance(file_values.get(opt.name), str):
        sources.append((f"config file {config_path}", file_values[opt.name]))
    if opt.env in env:
        sources.append((f"environment variable {opt.env}", env[opt.env]))
    sources.extend((f"flag {opt.flag}", text) for text in flag_value or [])
    return sources


def _parse(opt: Option, text: str, source: str) -> Any:
    try:
        return opt.parse(text)
    except ValueError as exc:
        raise UserError(f"bad {opt.flag} from {source}: {exc}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path} is not valid TOML: {exc}") from None


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}s"
    if isinstance(value, float):
        return f"{value}s"
    return str(value)

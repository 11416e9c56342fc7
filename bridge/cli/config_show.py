"""``libvirt-kafka-bridge config show``: the settings ``run`` would use, and where each one came from.

Takes exactly ``run``'s options, resolves them the same way (:func:`bridge.config.resolve`, so a bad
value exits 2 as it would for ``run``) and prints every setting with its source: ``flag --x``,
``env BRIDGE_X``, ``file PATH`` or ``default``. The pass-through tables (``[kafka]``,
``[schema_registry]``) are shown key by key, each with its own source, since their keys merge from
all of them. Secrets are masked (:func:`is_secret`). The text output is valid TOML, so it can seed a
config file; ``--output json`` is ``{name: {"value": ..., "source": ...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bridge import redaction
from bridge.cli import run
from bridge.config import Option, add_options, parse_key_values, resolve

MASK = redaction.MASK


def is_secret(key: str) -> bool:
    """The project's one rule (:func:`bridge.redaction.is_secret_key`): a password, secret, token or
    credential, ``basic.auth.user.info``, a JAAS config, or key material (``ssl.key.pem``; a
    ``*.location`` is a path and is shown)."""
    return redaction.is_secret_key(key)


def mask_url(url: str) -> str:
    """A URL with the password of its user-info masked."""
    return redaction.masked_url(url) or url


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "config", help="show the effective settings of run and where each came from",
        description="Inspect the settings of `run`.",
    )
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="the effective settings of run, with their sources, secrets masked",
        description="Print every setting `run` would use with the same flags, BRIDGE_* environment and "
                    "--config file, and where each came from (flag, env, file or default). Secrets "
                    "(passwords, secrets, tokens, key material, basic.auth.user.info) are masked.",
    )
    add_options(show, run.OPTIONS)
    show.add_argument("--output", choices=["toml", "json"], default="toml",
                      help="toml: a config file with each source as a comment (default); json: machine-readable")
    show.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    shown = effective_settings(args)
    if args.output == "json":
        print(json.dumps(shown, indent=2, sort_keys=False))
    else:
        print(render_toml(shown), end="")
    return 0


def effective_settings(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``{name: {"value": v, "source": s}}``, pass-through tables as ``{name: {key: {...}}}``; masked."""
    env = os.environ if environ is None else environ
    values = resolve(args, run.OPTIONS, env)  # validates exactly as run does
    config_path = getattr(args, "config", None) or env.get("BRIDGE_CONFIG")
    file_values: dict[str, Any] = {}
    if config_path:
        with Path(config_path).open("rb") as f:  # resolve() has read and validated it already
            file_values = tomllib.load(f)
    file_src = f"file {config_path}"
    out: dict[str, Any] = {}
    for opt in run.OPTIONS:
        if opt.repeatable_kv:
            out[opt.name] = _kv_sources(opt, values[opt.name], args, env, file_values, file_src)
            continue
        if getattr(args, opt.name, None) is not None:
            source = f"flag {opt.flag}"
        elif opt.env in env:
            source = f"env {opt.env}"
        elif opt.name in file_values:
            source = file_src
        else:
            source = "default"
        value = values[opt.name]
        if opt.name == "host_id" and value is None:  # as run.settings_from does
            value, source = socket.gethostname(), "default (the host name)"
        out[opt.name] = {"value": _plain(opt.name, value), "source": source}
    out["config"] = {"value": config_path, "source": "flag --config" if getattr(args, "config", None)
                     else ("env BRIDGE_CONFIG" if config_path else "default")}
    return out


def _kv_sources(opt: Option, merged: Mapping[str, str], args: argparse.Namespace, env: Mapping[str, str],
                file_values: Mapping[str, Any], file_src: str) -> dict[str, dict[str, str]]:
    """Each key's winning source, in resolve()'s order: file table, file string, env, flags (last wins)."""
    sources: dict[str, str] = {}
    table = file_values.get(opt.file_table) if opt.file_table else None
    if isinstance(table, dict):
        sources.update(dict.fromkeys(map(str, table), file_src))
    if isinstance(file_values.get(opt.name), str):
        sources.update(dict.fromkeys(parse_key_values(file_values[opt.name]), file_src))
    if opt.env in env:
        sources.update(dict.fromkeys(parse_key_values(env[opt.env]), f"env {opt.env}"))
    for text in getattr(args, opt.name, None) or []:
        sources.update(dict.fromkeys(parse_key_values(text), f"flag {opt.flag}"))
    return {key: {"value": MASK if is_secret(key) else value, "source": sources.get(key, "default")}
            for key, value in merged.items()}


def _plain(name: str, value: Any) -> Any:
    """A JSON/TOML-friendly value (paths as text, HOST:PORT as text); URLs with user-info masked."""
    if isinstance(value, Path):
        return str(value)
    if name == "metrics_address" and value is not None:
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if name == "schema_registry_url" and value:
        return mask_url(value)
    return value


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def render_toml(shown: Mapping[str, Any]) -> str:
    """The settings as a TOML config file; each line's comment is its source; unset settings commented out."""
    lines: list[str] = []
    tables: list[str] = []
    for opt in run.OPTIONS:
        entry = shown[opt.name]
        if opt.repeatable_kv:
            table = opt.file_table or opt.name
            tables.append(f"\n[{table}]" + ("" if entry else "  # none set"))
            tables.extend(f"{_toml_key(k)} = {_toml_value(v['value'])}  # {v['source']}" for k, v in entry.items())
            continue
        if entry["value"] is None:
            lines.append(f"# {opt.name} = (not set)  # {entry['source']}")
        else:
            lines.append(f"{opt.name} = {_toml_value(entry['value'])}  # {entry['source']}")
    config = shown["config"]
    header = f"# effective settings of `run`; config file: {config['value'] or 'none'} ({config['source']})"
    return "\n".join([header, *lines, *tables]) + "\n"


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))

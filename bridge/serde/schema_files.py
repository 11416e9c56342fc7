"""Loading the shipped ``.avsc`` files."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import fastavro

# ``bridge/_schemas`` links to the top-level ``schemas/`` so the .avsc files stay the single source of
# truth and still ship inside the wheel.
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "_schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Parse ``schemas/<name>.avsc`` (cached; parsed schemas are treated as immutable)."""
    path = SCHEMA_DIR / f"{name}.avsc"
    return parse_plain(json.loads(path.read_text(encoding="utf-8")))


def parse_plain(raw: Any) -> dict[str, Any]:
    """Parse a schema with its logical types removed, so timestamps stay exact int microseconds.

    The parsing canonical form ignores ``logicalType``, so fingerprints are unchanged; readers in other
    languages still see the annotations in the ``.avsc`` files.
    """
    parsed = fastavro.parse_schema(_strip_logical(raw))  # the parsed marker spares a re-parse per message
    if not isinstance(parsed, dict):
        raise ValueError("a record schema must be a JSON object")
    return parsed


def _strip_logical(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical(v) for v in node]
    return node


def domain_schema() -> dict[str, Any]:
    """The DomainRecord schema."""
    return load_schema("domain_record")


def host_schema() -> dict[str, Any]:
    """The HostRecord schema."""
    return load_schema("host_record")

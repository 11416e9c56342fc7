"""The schemas stay compatible from v1 on: fields are only appended, with defaults.

Appending (not inserting) is what lets an older reader decode a newer writer's single-object bytes
as a prefix; defaults are what lets a newer reader decode older bytes. Every published version is
frozen in ``tests/schema_history``; add the new one there when a schema changes.

The one other change allowed is appending a symbol to an enum that has a default (Avro resolves an
unknown symbol to it). An older reader that reads a newer writer as a prefix, without its schema,
cannot resolve the new symbol and counts that message undecodable: host_record v2 added
``LIBVIRT_UNREACHABLE``, so a 0.1.0 reader skips those heartbeats and, seeing none, flags the host stale,
which keeps its domains exactly as ``LIBVIRT_UNREACHABLE`` means.
"""

import io
import json
from pathlib import Path

import fastavro
import pytest

from bridge.serde.schema_files import SCHEMA_DIR, parse_plain

HISTORY = Path(__file__).resolve().parent.parent / "schema_history"
_NO_DEFAULT = object()


def history(name):
    files = sorted(HISTORY.glob(f"{name}.v*.avsc"))
    assert files, f"no frozen versions of {name}"
    return [json.loads(f.read_text()) for f in files]


def current(name):
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text())


def _fields(schema):
    return [(f["name"], f["type"], f.get("default", _NO_DEFAULT)) for f in schema["fields"]]


def _same_or_appended_symbols(old, new):
    """True if ``new`` equals ``old``, but for symbols appended to enums that have a default."""
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == new.get("type") == "enum":
        rest_old = {k: v for k, v in old.items() if k not in ("symbols", "doc")}
        rest_new = {k: v for k, v in new.items() if k not in ("symbols", "doc")}
        appended = new["symbols"][: len(old["symbols"])] == old["symbols"]
        grew = len(new["symbols"]) > len(old["symbols"])
        return rest_old == rest_new and appended and (not grew or "default" in new)
    if isinstance(old, dict) and isinstance(new, dict):
        return old.keys() == new.keys() and all(
            k == "doc" or _same_or_appended_symbols(old[k], new[k]) for k in old)
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same_or_appended_symbols(a, b) for a, b in zip(old, new, strict=True))
    return old == new


@pytest.mark.parametrize("name", ["domain_record", "host_record"])
def test_fields_are_only_appended_with_defaults(name):
    now = _fields(current(name))
    for old in history(name):
        before = _fields(old)
        assert [n for n, _, _ in now[: len(before)]] == [n for n, _, _ in before], "a field was removed or moved"
        for (fname, old_type, old_default), (_, new_type, new_default) in zip(before, now, strict=False):
            assert old_default == new_default, f"the default of {fname} changed"
            assert _same_or_appended_symbols(old_type, new_type), f"the type of {fname} changed"
        for fname, _type, default in now[len(before):]:
            assert default is not _NO_DEFAULT, f"new field {fname} needs a default"


def test_the_compatibility_check_refuses_what_it_must():
    base = {"type": "enum", "name": "E", "symbols": ["A", "B"], "default": "A"}
    assert _same_or_appended_symbols(base, {**base, "symbols": ["A", "B", "C"]})
    assert not _same_or_appended_symbols(base, {**base, "symbols": ["A", "C", "B"]})  # inserted
    assert not _same_or_appended_symbols(base, {**base, "symbols": ["A"]})            # removed
    no_default = {k: v for k, v in base.items() if k != "default"}
    assert not _same_or_appended_symbols(no_default, {**no_default, "symbols": ["A", "B", "C"]})
    assert not _same_or_appended_symbols("string", "long")
    assert not _same_or_appended_symbols(["null", "string"], ["string", "null"])


def _minimal_value(schema):
    if isinstance(schema, list):
        return None if "null" in schema else _minimal_value(schema[0])
    if isinstance(schema, str):
        return {"string": "x", "long": 1, "int": 1, "boolean": True}[schema]
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: _minimal_value(f["type"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind in ("array", "map"):
        return [] if kind == "array" else {}
    return _minimal_value(kind)


@pytest.mark.parametrize("name", ["domain_record", "host_record"])
def test_current_reader_reads_every_old_writer(name):
    reader = parse_plain(current(name))
    for old_raw in history(name):
        old = parse_plain(old_raw)
        value = _minimal_value(old_raw)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, old, value)
        decoded = fastavro.schemaless_reader(io.BytesIO(buf.getvalue()), old, reader)
        assert isinstance(decoded, dict)
        for key, v in value.items():
            assert decoded[key] == v

"""The schemas stay compatible from v1 on: fields are only appended, with defaults.

Appending (not inserting) is what lets an older reader decode a newer writer's single-object bytes
as a prefix; defaults are what lets a newer reader decode older bytes. Every published version is
frozen in ``tests/schema_history``; add the new one there when a schema changes.
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
    return [(f["name"], json.dumps(f["type"], sort_keys=True), f.get("default", _NO_DEFAULT))
            for f in schema["fields"]]


@pytest.mark.parametrize("name", ["domain_record", "host_record"])
def test_fields_are_only_appended_with_defaults(name):
    now = _fields(current(name))
    for old in history(name):
        before = _fields(old)
        assert now[: len(before)] == before, "an existing field was changed, removed or reordered"
        for fname, _type, default in now[len(before):]:
            assert default is not _NO_DEFAULT, f"new field {fname} needs a default"


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

"""The Confluent Schema Registry wire format: magic ``00``, 4-byte big-endian schema id, Avro binary.

Used when a registry URL is configured. ``confluent_kafka.schema_registry`` (the ``registry`` extra)
talks to the registry; ``mock://`` URLs give an in-process registry for tests.

Client settings (``--schema-registry-config KEY=VALUE``, a ``[schema_registry]`` table) are
SchemaRegistryClient's own keys: ``basic.auth.user.info`` (``user:password``), ``ssl.ca.location``,
``ssl.certificate.location``, ``ssl.key.location``, ``timeout``, ``max.retries``, ``bearer.auth.*``…
Secrets among them never appear in an error message.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import fastavro

from bridge.errors import DecodeError, UserError
from bridge.redaction import redact as _redact
from bridge.serde.schema_files import parse_plain

MAGIC = b"\x00"
HEADER_LEN = 5

URL_SETTING = "--schema-registry-url"
CONFIG_SETTING = "--schema-registry-config"
_CONFIG_PLACES = f"{CONFIG_SETTING} (or BRIDGE_SCHEMA_REGISTRY_CONFIG, or the config file's [schema_registry] table)"

# SchemaRegistryClient wants numbers for these; settings arrive as text.
_INT_KEYS = frozenset({"max.retries", "retries.wait.ms", "retries.max.wait.ms", "cache.capacity"})
_FLOAT_KEYS = frozenset({"timeout", "cache.latest.ttl.sec"})
_PATH_KEYS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location")
# The Java client's key; the Python client takes the credentials from basic.auth.user.info or the URL.
_CREDENTIALS_SOURCE = "basic.auth.credentials.source"


def registry_client(url: str, config: Mapping[str, str] | None = None) -> Any:
    """A SchemaRegistryClient for ``url`` (plus client settings such as basic auth).

    ``url`` may be a comma-separated list and may carry ``user:password@``; those credentials become
    ``basic.auth.user.info``, so no URL holding a password reaches the HTTP layer or its logs.
    Raises UserError for a setting the client refuses, naming it without its value.
    """
    try:
        from confluent_kafka.schema_registry import SchemaRegistryClient  # noqa: PLC0415
    except ImportError as exc:  # the extra is optional
        raise UserError(
            "a schema registry URL is set but confluent-kafka's schema registry support is not installed "
            "(pip install 'libvirt-kafka-bridge[registry]')"
        ) from exc
    conf = client_config(url, config)
    try:
        return SchemaRegistryClient.new_client(conf)
    except (ValueError, TypeError, OSError) as exc:
        # Unknown keys, malformed user:password, unreadable certificate or key files.
        raise UserError(f"bad {CONFIG_SETTING}: {_redact(str(exc) or type(exc).__name__, conf)}") from None


def client_config(url: str, config: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SchemaRegistryClient's config dict for ``url`` and the string-valued ``config``."""
    conf: dict[str, Any] = {}
    for key, value in (config or {}).items():
        if key in _INT_KEYS or key in _FLOAT_KEYS:
            try:
                conf[key] = int(value) if key in _INT_KEYS else float(value)
            except ValueError:
                kind = "a whole number" if key in _INT_KEYS else "a number"
                raise UserError(f"bad {CONFIG_SETTING} {key}: {value!r} is not {kind}") from None
        else:
            conf[key] = value
    plain_url, userinfo = _split_userinfo(url)
    source = conf.pop(_CREDENTIALS_SOURCE, None)
    if source is not None and str(source).upper() not in ("USER_INFO", "URL"):
        raise UserError(f"bad {CONFIG_SETTING} {_CREDENTIALS_SOURCE}={source}: only USER_INFO "
                        "(basic.auth.user.info) and URL (user:password@ in the URL) are supported")
    if userinfo is not None:
        if "basic.auth.user.info" in conf:
            raise UserError(f"credentials both in {URL_SETTING} and in {CONFIG_SETTING} basic.auth.user.info: "
                            "give them once")
        conf["basic.auth.user.info"] = userinfo
    for key in _PATH_KEYS:
        path = conf.get(key)
        if path and not os.path.exists(path):
            raise UserError(f"bad {CONFIG_SETTING} {key}: {path} does not exist")
    info = conf.get("basic.auth.user.info")
    if info is not None and ":" not in str(info):
        raise UserError(f"bad {CONFIG_SETTING} basic.auth.user.info: must be user:password (value not shown)")
    conf["url"] = plain_url
    return conf


def connect_registry(url: str, config: Mapping[str, str] | None = None) -> Any:
    """:func:`registry_client`, then one request to prove the registry is there and takes the credentials.

    Raises UserError with one line naming the setting to fix: the registry is unreachable, refuses the
    credentials, or is not a Confluent-compatible API at that URL.
    """
    conf = client_config(url, config)
    client = registry_client(url, config)
    shown = conf["url"]
    try:
        client.get_subjects()
    except Exception as exc:  # transport errors come from httpx (or httpx2), whose classes vary
        raise _startup_error(exc, shown, conf) from None
    return client


def _startup_error(exc: Exception, shown_url: str, conf: Mapping[str, Any]) -> UserError:
    from confluent_kafka.schema_registry.error import SchemaRegistryError  # noqa: PLC0415

    status = getattr(exc, "http_status_code", None) if isinstance(exc, SchemaRegistryError) else None
    where = f"the schema registry at {shown_url}"
    if status == 401:
        if "basic.auth.user.info" in conf or "bearer.auth.credentials.source" in conf:
            return UserError(f"{where} refused the credentials (HTTP 401): check basic.auth.user.info "
                             f"in {_CONFIG_PLACES}")
        return UserError(f"{where} requires credentials (HTTP 401): set basic.auth.user.info=USER:PASSWORD "
                         f"with {_CONFIG_PLACES}")
    if status == 403:
        return UserError(f"{where} denied these credentials access (HTTP 403): check basic.auth.user.info "
                         f"in {_CONFIG_PLACES}")
    if status is not None:
        message = getattr(exc, "error_message", None)
        said = f" ({_redact(str(message), conf)})" if message else ""
        return UserError(f"{where} answered HTTP {status} to GET /subjects{said}: is {URL_SETTING} the base URL "
                         f"of a Confluent-compatible API (for Apicurio Registry: .../apis/ccompat/v7)?")
    detail = _redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, conf)
    return UserError(f"cannot reach {where} ({URL_SETTING}): {detail}")


def redact(text: str, conf: Mapping[str, Any]) -> str:
    """``text`` with every secret value of ``conf`` masked: the project's one rule, :mod:`bridge.redaction`."""
    return _redact(text, conf)


def _split_userinfo(url: str) -> tuple[str, str | None]:
    """``url`` (comma-separated) without ``user:password@``, and the first URL's ``user:password``."""
    plain: list[str] = []
    userinfo: str | None = None
    for raw in url.split(","):
        part = raw.strip()
        try:
            split = urlsplit(part)
            has_userinfo = split.username is not None or split.password is not None
        except ValueError:
            raise UserError(f"bad {URL_SETTING}: a URL in it cannot be parsed") from None
        if not has_userinfo:
            plain.append(part)
            continue
        if userinfo is None:
            userinfo = f"{unquote(split.username or '')}:{unquote(split.password or '')}"
        host = split.netloc.rpartition("@")[2]
        plain.append(urlunsplit((split.scheme, host, split.path, split.query, split.fragment)))
    return ",".join(plain), userinfo


class ConfluentSerializer:
    """Registers ``schema`` under ``subject`` on first use and writes the Confluent wire format."""

    def __init__(self, schema: dict[str, Any], raw_schema_json: str, client: Any, subject: str) -> None:
        self._schema = schema
        self._raw = raw_schema_json
        self._client = client
        self._subject = subject
        self._header: bytes | None = None

    def __call__(self, value: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._registered())
        fastavro.schemaless_writer(buf, self._schema, value)
        return buf.getvalue()

    def frame(self, body: bytes) -> bytes:
        """A message of ``body``, the Avro binary of one value of the schema (written elsewhere)."""
        return self._registered() + body

    def _registered(self) -> bytes:
        if self._header is None:
            from confluent_kafka.schema_registry import Schema  # noqa: PLC0415

            schema_id = self._client.register_schema(self._subject, Schema(self._raw, schema_type="AVRO"))
            self._header = MAGIC + int(schema_id).to_bytes(4, "big")
        return self._header


class ConfluentDeserializer:
    """Reads the Confluent wire format, fetching (and caching) writer schemas from the registry."""

    def __init__(self, reader_schema: dict[str, Any], client: Any) -> None:
        self._reader = reader_schema
        self._client = client
        self._writers: dict[int, Any] = {}

    def __call__(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LEN or data[:1] != MAGIC:
            raise DecodeError("not a Confluent wire-format message (no 00 magic byte)")
        schema_id = int.from_bytes(data[1:HEADER_LEN], "big")
        writer = self._writers.get(schema_id)
        if writer is None:
            try:
                registered = self._client.get_schema(schema_id)
            except Exception as exc:  # the registry's errors vary by transport
                raise DecodeError(f"schema id {schema_id} not found in the registry: {exc}") from exc
            writer = parse_plain(json.loads(registered.schema_str))
            self._writers[schema_id] = writer
        try:
            value = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), writer, self._reader)
        except Exception as exc:
            raise DecodeError(f"Avro decode failed: {type(exc).__name__}: {exc}") from exc
        if not isinstance(value, dict):
            raise DecodeError("Avro payload is not a record")
        return value

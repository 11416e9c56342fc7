"""CloudEvents binary-mode headers (Kafka protocol binding, spec 1.0) for every message the agent writes.

The value stays the Avro record; the headers carry the event attributes, so CloudEvents SDKs, routers
and brokers' header filters can use the topics as they are. A tombstone is a message with no value and
no ``content-type``, as the binding says.

``ce_id`` is derived from the record (``<uuid>/<version>``), so a redelivered copy carries the same id
and CloudEvents-level deduplication sees it as the same event.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import quote

from bridge.records import DomainRecord, HostRecord, RecordKind

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The years datetime (and RFC 3339's four digits) can write.
_FIRST_SECOND = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
_LAST_SECOND = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds())
_gmtime, _strftime = time.gmtime, time.strftime

Headers = tuple[tuple[str, bytes], ...]

SPEC_VERSION = "1.0"
_SPEC_VERSION_UTF8 = SPEC_VERSION.encode()
CONTENT_TYPE = "application/avro"
TYPE_PREFIX = "io.libvirt_kafka_bridge"
DOMAIN_TYPES = {
    RecordKind.EVENT: f"{TYPE_PREFIX}.domain.event",
    RecordKind.RESYNC: f"{TYPE_PREFIX}.domain.resync",
    RecordKind.DELETED: f"{TYPE_PREFIX}.domain.deleted",
}
TOMBSTONE_TYPE = f"{TYPE_PREFIX}.domain.tombstone"
HOST_TYPE = f"{TYPE_PREFIX}.host.status"
HEARTBEAT_TYPE = f"{TYPE_PREFIX}.host.heartbeat"


def source(host: str) -> str:
    """The ``source`` attribute of a host's messages: a URI reference naming the host."""
    return f"/libvirt-kafka-bridge/hosts/{quote(host, safe='')}"


def domain_headers(record: DomainRecord) -> Headers:
    """Headers for a DomainRecord message."""
    return _headers(f"{record.uuid}/{record.version}", record.host, DOMAIN_TYPES[record.kind],
                    record.observed_at, record.uuid, CONTENT_TYPE)


def tombstone_headers(deleted: DomainRecord) -> Headers:
    """Headers for the tombstone that follows the DELETED record ``deleted``."""
    return _headers(f"{deleted.uuid}/{deleted.version}/tombstone", deleted.host, TOMBSTONE_TYPE,
                    deleted.observed_at, deleted.uuid, None)


def host_headers(record: HostRecord) -> Headers:
    """Headers for a HostRecord message."""
    return _headers(f"{record.host}/{record.agent.instance_id}/{record.heartbeat_at}", record.host, HOST_TYPE,
                    record.heartbeat_at, record.host, CONTENT_TYPE)


def heartbeat_headers(record: HostRecord) -> Headers:
    """Headers for a heartbeat message (its id differs from the HostRecord sent at the same instant)."""
    return _headers(f"{record.host}/{record.agent.instance_id}/{record.heartbeat_at}/heartbeat", record.host,
                    HEARTBEAT_TYPE, record.heartbeat_at, record.host, CONTENT_TYPE)


def _headers(event_id: str, host: str, ce_type: str, time_us: int, subject: str,
             content_type: str | None) -> Headers:
    # One tuple, each value encoded in place: a generator over a list of pairs cost twice as much, for
    # every message the agent writes.
    headers = (
        ("ce_specversion", _SPEC_VERSION_UTF8),
        ("ce_id", event_id.encode()),
        ("ce_source", source(host).encode()),
        ("ce_type", ce_type.encode()),
        ("ce_time", _rfc3339(time_us).encode()),
        ("ce_subject", subject.encode()),
    )
    return headers if content_type is None else (*headers, ("content-type", content_type.encode()))


def _rfc3339(micros: int) -> str:
    # Exact: a float division would round some microseconds. gmtime and strftime, not datetime
    # arithmetic: half the cost, paid for every message the agent writes.
    seconds, micro = divmod(micros, 1_000_000)
    if not _FIRST_SECOND <= seconds <= _LAST_SECOND:
        raise OverflowError(f"{micros} us since 1970 is outside the years 1 to 9999")
    return f"{_strftime('%Y-%m-%dT%H:%M:%S', _gmtime(seconds))}.{micro:06d}Z"

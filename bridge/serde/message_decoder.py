"""The one way a Kafka message on the bridge's topics becomes a typed payload.

Every reader (the consumer library's reflector, ``tail``, the demo) goes through
:meth:`MessageDecoder.decode`: it turns (topic, key, value, headers) into a :class:`Decoded` payload, or
raises :class:`~bridge.errors.DecodeError` whose text is the reason, for the caller to count and log.

What makes a message the bridge's is its bytes: a single-object Avro value with one of the bridge's
schema fingerprints, under a key that matches the record. The CloudEvents headers are for routers and
SDKs; they are read only to name a foreign CloudEvent's type when its bytes are not ours. Reading them
for every message would cost a reader more than the rest of the message: confluent-kafka builds them
on the first ``headers()`` call, 3 to 8 us for the bridge's seven, against ~13 us to decode a 1.5 KB
DomainRecord. So a message with our bytes is ours whatever its ``ce_type`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bridge.errors import DecodeError
from bridge.records import DomainRecord, HostRecord
from bridge.serde.cloud_events import TYPE_PREFIX
from bridge.serde.read_as import ReadAs
from bridge.serde.record_codec import UUID_RE, RecordCodec


@dataclass(frozen=True, slots=True)
class DomainTombstone:
    """A null value on the domains topic: the domain key is deleted."""

    uuid: str


@dataclass(frozen=True, slots=True)
class HostTombstone:
    """A null value on the hosts topic: forget the host (its domains stay until an inventory removes them)."""

    host: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A message on the heartbeats topic: ``host``'s liveness (status, agent, time), never its inventory.

    ``record`` is None for a tombstone there, which forgets nothing (the hosts topic's tombstone does).
    """

    host: str
    record: HostRecord | None


Payload = DomainRecord | HostRecord | DomainTombstone | HostTombstone | Heartbeat

HeaderValue = str | bytes | None
Headers = Sequence[tuple[str, HeaderValue]] | Mapping[str, HeaderValue] | None
"""Message headers as Kafka clients hand them over (a list of pairs, or a mapping)."""
LazyHeaders = Headers | Callable[[], Headers]
"""Headers, or what returns them (``msg.headers``): called only for a message whose bytes are not ours."""


@dataclass(frozen=True, slots=True)
class Decoded:
    """A payload and how its bytes were read (always :attr:`ReadAs.CURRENT` for tombstones)."""

    payload: Payload
    read_as: ReadAs = ReadAs.CURRENT


class MessageDecoder:
    """Decodes the messages of the bridge's topics (domains, hosts and, if set, heartbeats)."""

    def __init__(self, codec: RecordCodec, domains_topic: str, hosts_topic: str, heartbeats_topic: str = "") -> None:
        self._codec = codec
        self._domains_topic = domains_topic
        self._hosts_topic = hosts_topic
        self._heartbeats_topic = heartbeats_topic

    def decode(self, topic: str, key: bytes | None, value: bytes | None, headers: LazyHeaders = None) -> Decoded:
        """The payload of one message; raises DecodeError naming why it is not one of ours (and, for a
        foreign CloudEvent, its type)."""
        return Decoded(*self.read(topic, key, value, headers))

    def read(self, topic: str, key: bytes | None, value: bytes | None,
             headers: LazyHeaders = None) -> tuple[Payload, ReadAs]:
        """:meth:`decode` as a pair (payload, how it was read), for readers that unwrap every message."""
        try:
            return self._read(topic, key, value)
        except DecodeError as exc:
            foreign = _foreign_cloud_event_type(headers() if callable(headers) else headers)
            if foreign is None:
                raise
            raise DecodeError(f"a CloudEvent of foreign type {foreign!r}: {exc}") from None

    def _read(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[Payload, ReadAs]:
        if topic == self._domains_topic:
            if value is None:
                return DomainTombstone(_tombstone_key(key, uuid=True)), ReadAs.CURRENT
            return self._codec.read_domain(value, key)
        if topic == self._hosts_topic:
            if value is None:
                return HostTombstone(_tombstone_key(key, uuid=False)), ReadAs.CURRENT
            host = self._codec.decode_host(value, key)
            return host.record, host.read_as
        if topic == self._heartbeats_topic and topic:
            if value is None:
                return Heartbeat(_tombstone_key(key, uuid=False), None), ReadAs.CURRENT
            beat = self._codec.decode_heartbeat(value, key)
            return Heartbeat(beat.record.host, beat.record), beat.read_as
        raise DecodeError(f"topic {topic} is not one of {', '.join(self._topics())}")

    def _topics(self) -> list[str]:
        return [t for t in (self._domains_topic, self._hosts_topic, self._heartbeats_topic) if t]


_OUR_TYPES = f"{TYPE_PREFIX}."


def _foreign_cloud_event_type(headers: Headers) -> str | None:
    # Types are matched by prefix: types a newer agent adds are ours too.
    if not headers:
        return None  # 0.1.0 sent no headers
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, raw in pairs:
        if name != "ce_type" or raw is None:
            continue
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        return None if text.startswith(_OUR_TYPES) else text
    return None


def _tombstone_key(key: bytes | None, *, uuid: bool) -> str:
    if not key:
        raise DecodeError("tombstone without a key")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("tombstone key is not UTF-8") from None
    if uuid and not UUID_RE.match(text):
        raise DecodeError("tombstone key is not a canonical lower-case UUID")
    return text

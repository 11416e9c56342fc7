"""Resync on demand: the signal written to the control topic, as Debezium's signals do for snapshots.

``libvirt-kafka-bridge resync --host H`` (or ``--all``) writes one message to the control topic
(default ``libvirt.control``, compacted, created by the agents): key the target host id, or ``*`` for
every host; value a small JSON object. An agent reads the topic from its end while it runs, and a
signal for its host id (or ``*``) makes it resync at once; the HostRecord with that resync's inventory
carries the signal's id in ``signal_id``.

Who may write to the control topic may make every agent relist its domains: grant WRITE on it to the
operators who run ``resync``, READ to the agents' principals, nothing to anyone else (Kafka ACLs).

The agents also write to it themselves (so grant their principals WRITE too): a host that stops owning
a domain it published for (a migration's source at the hand-off, a host whose listing took an incoming
domain for its own) sends a :class:`ReassertSignal` for the UUID once its own records of it are
acknowledged, keyed ``domain/<uuid>``; whichever agent owns the domain then publishes it again. Kafka
orders only one producer's messages, so the old owner's last record can land after the new owner's
claim (a broker failover delays one of them); compaction keeps the last offset, and without the
re-assertion a compacted key would hold a stale host's word until the owner's next resync. The
request names the version of the requester's last record; every agent that reads it keeps its
clock above that version, if it is no further ahead than twice ``--max-clock-skew`` and a second
(:func:`bridge.agent.reassert.plausible_ahead_us`), which also bounds what a writer of the topic can
do to the agents' versions.
"""

from __future__ import annotations

import json
import uuid as uuid_mod
from dataclasses import dataclass
from typing import Any

from bridge.errors import DecodeError
from bridge.serde.record_codec import UUID_RE

ALL_HOSTS = "*"
DEFAULT_CONTROL_TOPIC = "libvirt.control"
_TYPE = "resync"
_REASSERT_TYPE = "reassert"
_REASSERT_KEY_PREFIX = "domain/"


@dataclass(frozen=True, slots=True)
class ResyncSignal:
    """A request that ``host`` (or every host, :data:`ALL_HOSTS`) resync now."""

    host: str
    id: str
    requested_at: int
    """Microseconds since the epoch."""
    requested_by: str = ""

    @classmethod
    def new(cls, host: str, requested_at: int, requested_by: str = "") -> ResyncSignal:
        return cls(host, uuid_mod.uuid4().hex, requested_at, requested_by)

    def key(self) -> bytes:
        return self.host.encode()

    def value(self) -> bytes:
        return json.dumps({"type": _TYPE, "id": self.id, "host": self.host, "requested_at": self.requested_at,
                           "requested_by": self.requested_by}, sort_keys=True).encode()

    def addresses(self, host: str) -> bool:
        """True if the agent of ``host`` must act on this signal."""
        return self.host in (ALL_HOSTS, host)

    @classmethod
    def decode(cls, key: bytes | None, value: bytes | None) -> ResyncSignal:
        """Parse a control-topic message; DecodeError naming what is wrong with anything else."""
        return cls._from(_json_object(value), key)

    @classmethod
    def _from(cls, d: dict[str, Any], key: bytes | None) -> ResyncSignal:
        if d.get("type") != _TYPE:
            raise DecodeError("not a resync signal (no \"type\": \"resync\")")
        try:
            signal = cls(str(d["host"]), str(d["id"]), int(d["requested_at"]), str(d.get("requested_by", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"a resync signal without a valid {exc}") from None
        if key is not None and key != signal.key():
            raise DecodeError(f"signal for host {signal.host!r} sent under key {key!r}")
        return signal


@dataclass(frozen=True, slots=True)
class ReassertSignal:
    """A request, from ``requested_by``, that whichever host owns domain ``uuid`` publish it again."""

    uuid: str
    id: str
    requested_at: int
    """Microseconds since the epoch."""
    requested_by: str = ""
    after: tuple[int, int] | None = None
    """(partition, offset) of the requester's last record of the domain: an owner whose own newest
    record of it sits later in that partition, with a higher version, already has the last word."""
    version: int | None = None
    """The version of that record. Every agent that reads the request keeps its own clock above it
    (a hybrid logical clock's receive rule), so the owner's next record outranks it exactly, whether
    it is a claim still to come or an answer to this request. Absent in requests of older agents."""

    @classmethod
    def new(cls, uuid: str, requested_at: int, requested_by: str = "",
            after: tuple[int, int] | None = None, version: int | None = None) -> ReassertSignal:
        return cls(uuid, uuid_mod.uuid4().hex, requested_at, requested_by, after, version)

    def key(self) -> bytes:
        return (_REASSERT_KEY_PREFIX + self.uuid).encode()

    def value(self) -> bytes:
        body: dict[str, object] = {"type": _REASSERT_TYPE, "id": self.id, "uuid": self.uuid,
                                   "requested_at": self.requested_at, "requested_by": self.requested_by}
        if self.after is not None:
            body["partition"], body["offset"] = self.after
        if self.version is not None:
            body["version"] = self.version
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def _from(cls, d: dict[str, Any], key: bytes | None) -> ReassertSignal:
        try:
            after = (int(d["partition"]), int(d["offset"])) if "offset" in d else None
            version = int(d["version"]) if d.get("version") is not None else None
            signal = cls(str(d["uuid"]), str(d["id"]), int(d["requested_at"]), str(d.get("requested_by", "")),
                         after, version)
        except (KeyError, TypeError, ValueError) as exc:
            raise DecodeError(f"a reassert signal without a valid {exc}") from None
        if not UUID_RE.match(signal.uuid):
            raise DecodeError(f"a reassert signal for {signal.uuid!r}, not a lower-case domain UUID")
        if key is not None and key != signal.key():
            raise DecodeError(f"reassert signal for {signal.uuid!r} sent under key {key!r}")
        return signal


Signal = ResyncSignal | ReassertSignal


def decode_signal(key: bytes | None, value: bytes | None) -> Signal:
    """Parse any control-topic message; DecodeError naming what is wrong with anything else."""
    d = _json_object(value)
    if d.get("type") == _REASSERT_TYPE:
        return ReassertSignal._from(d, key)
    return ResyncSignal._from(d, key)


def _json_object(value: bytes | None) -> dict[str, Any]:
    if value is None:
        raise DecodeError("a tombstone, not a signal")
    try:
        d = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(d, dict):
        raise DecodeError("not a resync signal (no \"type\": \"resync\")")
    return d

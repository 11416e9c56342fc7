"""Builders for the records the fakes carry, and their encoded messages."""

from __future__ import annotations

from bridge.records import AgentInfo, DomainRecord, HostRecord, RecordKind
from bridge.serde import RecordCodec, cloud_events

DOMAINS = "libvirt.domains"
HOSTS = "libvirt.hosts"
HEARTBEATS = "libvirt.hosts.heartbeats"
AGENT = AgentInfo("agent-1", "test", "9.0.0")
CODEC = RecordCodec(domains_topic=DOMAINS, hosts_topic=HOSTS, heartbeats_topic=HEARTBEATS)


def uuid_of(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def domain(n: int, version: int, *, host: str = "hv1", state: str = "RUNNING",
           kind: RecordKind = RecordKind.EVENT) -> DomainRecord:
    return DomainRecord(uuid=uuid_of(n), name=f"vm{n}", host=host, version=version, kind=kind, agent=AGENT,
                        observed_at=version, state=state, reason="BOOTED", active=True, persistent=True,
                        xml=f"<domain><name>vm{n}</name></domain>")


def host(name: str = "hv1", heartbeat_at: int = 1) -> HostRecord:
    return HostRecord(host=name, agent=AGENT, heartbeat_at=heartbeat_at)


def domain_message(record: DomainRecord) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) as the agent produces a DomainRecord."""
    return record.uuid.encode(), CODEC.encode_domain(record), list(cloud_events.domain_headers(record))


def host_message(record: HostRecord) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return record.host.encode(), CODEC.encode_host(record), list(cloud_events.host_headers(record))

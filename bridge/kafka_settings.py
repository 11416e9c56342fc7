"""Where the bridge's topics live and how records on them are encoded (agent and consumer alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.errors import UserError
from bridge.redaction import masked, masked_url
from bridge.serde import RecordCodec

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the topics live and how to reach them."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    domains_topic: str = "libvirt.domains"
    """The domains topic (the ``--topic`` option, ``topic`` in a config file)."""
    hosts_topic: str = "libvirt.hosts"
    heartbeats_topic: str | None = None
    """Where agents heartbeat: a HostRecord without its inventory, keyed by host id, so the hosts topic
    holds a record per completed resync, status change or resync interval instead of one per heartbeat.
    None: ``<hosts_topic>.heartbeats`` (see :attr:`heartbeats`). Empty: agents heartbeat on the hosts
    topic, every heartbeat repeating the inventory (the 0.1 behaviour)."""
    kafka_config: dict[str, str] = field(default_factory=dict)
    """librdkafka settings passed through (``security.protocol``, ``sasl.*``, ``ssl.*``…); secret values
    (``sasl.password``…) are masked in repr."""
    schema_registry_url: str | None = None
    schema_registry_config: dict[str, str] = field(default_factory=dict)
    """SchemaRegistryClient settings (``basic.auth.user.info``, ``ssl.*``…); secret values masked in repr."""

    def __repr__(self) -> str:
        return (f"KafkaSettings(bootstrap_servers={self.bootstrap_servers!r}, domains_topic={self.domains_topic!r}, "
                f"hosts_topic={self.hosts_topic!r}, heartbeats_topic={self.heartbeats!r}, "
                f"kafka_config={masked(self.kafka_config)!r}, "
                f"schema_registry_url={masked_url(self.schema_registry_url)!r}, "
                f"schema_registry_config={masked(self.schema_registry_config)!r})")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> KafkaSettings:
        return cls(
            bootstrap_servers=values["bootstrap_servers"],
            domains_topic=values["topic"],
            hosts_topic=values["hosts_topic"],
            heartbeats_topic=values.get("heartbeats_topic"),
            kafka_config=dict(values.get("kafka_config") or {}),
            schema_registry_url=values.get("schema_registry_url"),
            schema_registry_config=dict(values.get("schema_registry_config") or {}),
        )

    @property
    def heartbeats(self) -> str:
        """The heartbeats topic in effect; empty when heartbeats go to the hosts topic."""
        if self.heartbeats_topic is None:
            return f"{self.hosts_topic}.heartbeats"
        return self.heartbeats_topic

    def topics(self) -> tuple[str, ...]:
        """The domains, hosts and (if any) heartbeats topics."""
        return tuple(t for t in (self.domains_topic, self.hosts_topic, self.heartbeats) if t)

    def client_config(self) -> dict[str, str]:
        """librdkafka settings common to producer, consumer and admin clients."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_config}

    def codec(self) -> RecordCodec:
        """The record codec for these settings (registry client when a URL is set).

        With a registry URL this makes one request to the registry first: UserError (naming the setting)
        when it is unreachable or refuses the credentials, so start-up fails before anything runs.
        """
        registry = None
        if self.schema_registry_url:
            from bridge.serde.confluent_wire import connect_registry  # noqa: PLC0415

            registry = connect_registry(self.schema_registry_url, self.schema_registry_config)
        elif self.schema_registry_config:
            raise UserError("--schema-registry-config is set but --schema-registry-url is not")
        return RecordCodec(registry, self.domains_topic, self.hosts_topic, self.heartbeats or self.hosts_topic)

    def check_distinct(self) -> None:
        """UserError unless the domains, hosts and heartbeats topics are three different topics."""
        names = {"--topic": self.domains_topic, "--hosts-topic": self.hosts_topic}
        if self.heartbeats:
            names["--heartbeats-topic"] = self.heartbeats
        seen: dict[str, str] = {}
        for flag, topic in names.items():
            if topic in seen:
                raise UserError(f"{seen[topic]} and {flag} must differ (both are {topic!r})")
            seen[topic] = flag

"""Where the bridge's topics live and how records on them are encoded (agent and consumer alike)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge.serde import RecordCodec

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@dataclass(frozen=True)
class KafkaSettings:
    """Where the topics live and how to reach them."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    topic: str = "libvirt.domains"
    hosts_topic: str = "libvirt.hosts"
    kafka_config: dict[str, str] = field(default_factory=dict)
    schema_registry_url: str | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> KafkaSettings:
        return cls(
            bootstrap_servers=values["bootstrap_servers"],
            topic=values["topic"],
            hosts_topic=values["hosts_topic"],
            kafka_config=dict(values.get("kafka_config") or {}),
            schema_registry_url=values.get("schema_registry_url"),
        )

    def client_config(self) -> dict[str, str]:
        """librdkafka settings common to producer, consumer and admin clients."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_config}

    def codec(self) -> RecordCodec:
        """The record codec for these settings (registry client when a URL is set)."""
        registry = None
        if self.schema_registry_url:
            from bridge.serde.confluent_wire import registry_client  # noqa: PLC0415

            registry = registry_client(self.schema_registry_url)
        return RecordCodec(registry, self.topic, self.hosts_topic)

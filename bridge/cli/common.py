"""The command-line options every subcommand shares: where Kafka is and how records are encoded."""

from __future__ import annotations

from bridge.config import Option, parse_secret_key_values
from bridge.kafka_settings import DEFAULT_BOOTSTRAP

__all__ = ["KAFKA_OPTIONS"]

KAFKA_OPTIONS: tuple[Option, ...] = (
    Option("bootstrap_servers", "Kafka bootstrap servers, host:port[,host:port...]", DEFAULT_BOOTSTRAP,
           metavar="HOST:PORT"),
    Option("topic", "compacted topic of DomainRecords, keyed by domain UUID", "libvirt.domains",
           metavar="TOPIC"),
    Option("hosts_topic", "compacted topic of HostRecords, keyed by host id", "libvirt.hosts",
           metavar="TOPIC"),
    Option("heartbeats_topic", "compacted topic of heartbeats (HostRecords without the inventory), keyed by "
           "host id; default: the hosts topic's name + '.heartbeats'; empty: heartbeat on the hosts topic, "
           "each heartbeat repeating the inventory", None, metavar="TOPIC"),
    Option("kafka_config", "librdkafka setting passed through, e.g. security.protocol=SASL_SSL; "
           "repeatable, or a [kafka] table in the config file", None, parse_secret_key_values,
           metavar="KEY=VALUE", repeatable_kv=True),
    Option("schema_registry_url", "write the Confluent wire format with this Schema Registry "
           "instead of Avro single-object encoding", None, metavar="URL"),
    Option("schema_registry_config", "Schema Registry client setting, e.g. basic.auth.user.info=USER:PASSWORD "
           "or ssl.ca.location=FILE; repeatable, or a [schema_registry] table in the config file", None,
           parse_secret_key_values, metavar="KEY=VALUE", repeatable_kv=True, table="schema_registry"),
)

"""libvirt-kafka-bridge: libvirt domain events as a versioned, compacted Kafka log.

Architecture (one concept per module):

- ``bridge.records``: the record envelope (DomainRecord, HostRecord) as plain dataclasses.
- ``bridge.kafka_settings``: where the topics live and how records are encoded.
- ``bridge.serde``: Avro wire formats (single-object encoding, Confluent registry format).
- ``bridge.core``: pure logic with no I/O: version clock, per-domain coalescing, ownership rules.
- ``bridge.agent``: the per-host agent: libvirt edge, Kafka edge, and the pipeline between them.
- ``bridge.consumer``: the library that rebuilds fleet state from the log (reflector, store, informer).
- ``bridge.cli``: the ``libvirt-kafka-bridge`` command.
"""

__version__ = "0.2.0"

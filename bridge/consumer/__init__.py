"""The consumer library: a live, consistent view of every domain, rebuilt from the two topics.

Modelled on client-go's ``tools/cache``, one concept per module:

- :mod:`~bridge.consumer.reflector` reads ``libvirt.domains`` and ``libvirt.hosts`` from a position
  (the beginning by default) with manual partition assignment, decodes, skips and counts foreign
  bytes, and reports when it has caught up with the high watermarks it saw at start (*synced*);
- :mod:`~bridge.consumer.store` is the pure reconciliation core: newest version wins, ``DELETED`` and
  tombstones remove, host inventories repair missed deletes, stale hosts are flagged;
- :mod:`~bridge.consumer.informer` owns the store and the threads: it applies the reflector's batches,
  serves consistent snapshots (:class:`Snapshot`, with the :class:`Position` they reflect) and
  delivers :class:`Change`\\ s to handlers and iterators.

Typical use::

    from bridge.consumer import Informer, KafkaSettings

    with Informer(KafkaSettings(bootstrap_servers="kafka:9092")) as informer:
        informer.wait_for_sync(timeout=60)
        for change in informer.changes():
            print(change.type, change.record.name, change.record.state)
"""

from bridge.consumer.changes import Change, ChangeCause, ChangeType
from bridge.consumer.history import PositionExpired
from bridge.consumer.informer import HandlerRegistration, Informer, InformerStats, Watch
from bridge.consumer.position import Offset, Position
from bridge.consumer.reflector import ConsumerError
from bridge.consumer.snapshot import Snapshot
from bridge.consumer.store import ApplyResult, Outcome, Store
from bridge.kafka_settings import KafkaSettings

__all__ = [
    "ApplyResult",
    "Change",
    "ChangeCause",
    "ChangeType",
    "ConsumerError",
    "HandlerRegistration",
    "Informer",
    "InformerStats",
    "KafkaSettings",
    "Offset",
    "Outcome",
    "Position",
    "PositionExpired",
    "Snapshot",
    "Store",
    "Watch",
]

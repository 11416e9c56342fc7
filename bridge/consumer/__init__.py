"""The consumer library: a live, consistent view of every domain, rebuilt from the two topics.

Modelled on client-go's ``tools/cache``, one concept per module:

- :mod:`~bridge.consumer.reflector` reads ``libvirt.domains`` and ``libvirt.hosts`` from a position
  (the beginning by default) with manual partition assignment, decodes, skips and counts foreign
  bytes, and reports when it has caught up with the high watermarks it saw at start (*synced*);
- :mod:`~bridge.consumer.store` is the pure reconciliation core: newest version wins, ``DELETED`` and
  tombstones remove, host inventories repair missed deletes, stale and unreachable hosts are flagged;
- :mod:`~bridge.consumer.view` holds the store, the position it reflects and the recent changes
  (:mod:`~bridge.consumer.history`), and applies each of the reflector's poll batches atomically;
- :mod:`~bridge.consumer.delivery` fans changes out to readers (handlers, iterators), merged per
  domain while a reader lags (:mod:`~bridge.consumer.changes`);
- :mod:`~bridge.consumer.informer` wires them together and owns the threads;
  :mod:`~bridge.consumer.metrics` exposes its counters to Prometheus.

Thread map: ``informer-reflector:<topic>`` (owned by the :class:`Informer`) reads Kafka and applies
poll batches to the view under the view's lock, then queues the changes under the fan-out's lock (always in
that order); ``informer-handler-N:<topic>`` (one per :meth:`Informer.add_handler`, owned by the
fan-out) takes changes from its own queue and calls the handlers; any caller's thread may read the
view (:meth:`Informer.list`, :meth:`Informer.get`) or iterate a :class:`Watch`.

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

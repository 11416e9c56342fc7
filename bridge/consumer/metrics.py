"""Prometheus metrics of an informer, for the service that runs it.

:class:`InformerCollector` reads the informer at each scrape (its :class:`InformerStats` and one
:meth:`Informer.list` snapshot), so it keeps no numbers of its own. Register it in the service's
registry (or a registry of its own; nothing here touches a global one)::

    from prometheus_client import REGISTRY
    from bridge.consumer.metrics import InformerCollector

    REGISTRY.register(InformerCollector(informer))

Names start with ``libvirt_kafka_bridge_consumer_``; ``labels`` adds constant labels, to tell several
informers of one process apart. ``lag_messages`` per partition is the distance from the view's
position (``position_offset``) to the high watermark the brokers last reported to the reader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.consumer.informer import InformerStats
from bridge.consumer.snapshot import Snapshot

PREFIX = "libvirt_kafka_bridge_consumer_"


class InformerSource(Protocol):
    """What the collector reads: an :class:`~bridge.consumer.Informer` provides it."""

    def stats(self) -> InformerStats: ...

    def list(self) -> Snapshot: ...

    def lag(self) -> Mapping[tuple[str, int], int]: ...

    @property
    def last_error(self) -> str | None: ...


class InformerCollector(Collector):
    """An informer's counters, sync state, view size and read position, read per scrape."""

    def __init__(self, informer: InformerSource, *, prefix: str = PREFIX,
                 labels: Mapping[str, str] | None = None) -> None:
        self._informer = informer
        self._prefix = prefix
        self._label_names = sorted(labels or {})
        self._label_values = [str((labels or {})[k]) for k in self._label_names]

    def collect(self) -> Iterable[Metric]:
        stats = self._informer.stats()
        snap = self._informer.list()
        counters = (
            ("records_applied", "Messages taken into the view (newer than anything seen for their key).",
             stats.applied),
            ("records_skipped_older", "Domain records not newer than a version already seen.", stats.skipped_older),
            ("records_listed_away", "Domain records their host's latest inventory had already listed away.",
             stats.listed_away),
            ("undecodable", "Messages skipped because they are not records of this bridge.", stats.undecodable),
            ("unknown_schema", "Records written with a newer schema, read without the fields it added.",
             stats.unknown_schema),
            ("handler_errors", "Exceptions raised by change handlers.", stats.handler_errors),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(self._prefix + name, doc, labels=self._label_names)
            family.add_metric(self._label_values, value)
            yield family
        unknown = sum(1 for r in snap.domains.values() if r.host in snap.stale_hosts)
        gauges = (
            ("synced", "1 once the view has caught up with the high watermarks seen at start.", int(snap.synced)),
            ("domains", "Domains in the view.", len(snap.domains)),
            ("domains_unknown", "Domains in the view whose host is stale (their state may be outdated).", unknown),
            ("hosts", "Hosts in the view.", len(snap.hosts)),
            ("stale_hosts", "Hosts whose heartbeat is older than the stale limit.", len(snap.stale_hosts)),
            ("reader_error", "1 while the reader has a problem reaching Kafka or the topics.",
             int(self._informer.last_error is not None)),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(self._prefix + name, doc, labels=self._label_names)
            gauge.add_metric(self._label_values, value)
            yield gauge
        position = GaugeMetricFamily(self._prefix + "position_offset",
                                     "Next offset the view will read, per topic partition.",
                                     labels=[*self._label_names, "topic", "partition"])
        for (topic, partition), offset in snap.position.items():
            position.add_metric([*self._label_values, topic, str(partition)], offset)
        yield position
        lag = GaugeMetricFamily(self._prefix + "lag_messages",
                                "Messages between the view's position and the high watermark last reported by "
                                "the brokers, per topic partition.",
                                labels=[*self._label_names, "topic", "partition"])
        for (topic, partition), behind in self._informer.lag().items():
            lag.add_metric([*self._label_values, topic, str(partition)], behind)
        yield lag

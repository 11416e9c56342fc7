"""The agent's Prometheus metrics: one registry per agent, every name prefixed ``libvirt_kafka_bridge_``.

Counters and gauges are not kept twice: a custom collector reads :meth:`Agent.status` at each scrape,
so ``/metrics``, the progress line and ``status.json`` show the same numbers. Only the latency
histograms are metrics of their own, observed where the latency ends (:class:`AgentMetrics` is the
pipeline's :class:`~bridge.agent.pipeline.PipelineObserver`):

- ``event_ack_latency_seconds``: from the agent receiving an event (``DomainEvent.received_at``) to
  Kafka acknowledging the record that lists it, once per event;
- ``snapshot_read_latency_seconds``: one domain's snapshot read from libvirt, from the start of its
  reader's group to the group's end (a group of N domains is N + 1 round-trips, see
  :mod:`bridge.agent.snapshot`).

Nothing here is global: the default ``prometheus_client.REGISTRY`` is never touched, so several
agents (or tests) in one process each have their own numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.core.version_clock import Clock
from bridge.records import DomainRecord, RecordKind

if TYPE_CHECKING:
    from bridge.agent.status import AgentStatus

NAMESPACE = "libvirt_kafka_bridge"
PREFIX = NAMESPACE + "_"

# From a healthy millisecond path up to a Kafka outage of minutes (the agent never drops an event).
EVENT_ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
SNAPSHOT_READ_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, float("inf"))


class AgentMetrics:
    """One agent's :attr:`registry`: its counters (read at scrape time) and latency histograms."""

    def __init__(self, status: Callable[[], AgentStatus], info: Callable[[], Mapping[str, str]],
                 now: Clock) -> None:
        self._now = now
        self.registry = CollectorRegistry()
        self._event_ack = Histogram(
            PREFIX + "event_ack_latency_seconds",
            "Seconds from receiving a libvirt event to Kafka acknowledging the record that lists it.",
            buckets=EVENT_ACK_BUCKETS, registry=self.registry,
        )
        self._snapshot_read = Histogram(
            PREFIX + "snapshot_read_latency_seconds",
            "Seconds to read one domain's snapshot (XML, state, flags) from libvirt, with the others read with it.",
            buckets=SNAPSHOT_READ_BUCKETS, registry=self.registry,
        )
        self.registry.register(AgentCollector(status, info))
        ProcessCollector(namespace=NAMESPACE, registry=self.registry)

    # -- PipelineObserver ------------------------------------------------------------------------------

    def snapshot_read(self, seconds: float) -> None:
        self._snapshot_read.observe(seconds)

    def record_acked(self, record: DomainRecord) -> None:
        if not record.events:
            return
        now = self._now()
        for event in record.events:
            self._event_ack.observe(max(0.0, (now - event.received_at) / 1e6))


class AgentCollector(Collector):
    """The agent's counters and gauges, read from :class:`~bridge.agent.status.AgentStatus` per scrape."""

    def __init__(self, status: Callable[[], AgentStatus], info: Callable[[], Mapping[str, str]]) -> None:
        self._status = status
        self._info = info

    def collect(self) -> Iterable[Metric]:
        st = self._status()
        yield InfoMetricFamily(PREFIX + "agent", "The publishing agent: software and libvirt versions, host id.",
                               value=dict(self._info()))
        yield _by_label(PREFIX + "events_received", "libvirt events received, by event id.", "event",
                        st.events_received_by_id)
        yield _by_label(PREFIX + "events_published", "Events published in a record, by event id.", "event",
                        st.events_published_by_id)
        yield _counter("events_not_owned", "Events not published: the domain is not owned here (hand-off).",
                       st.events_not_owned)
        yield _counter("events_coalesced", "Events that shared a record with an earlier event of their domain.",
                       st.events_coalesced)
        yield _counter("events_elided", "Events merged away by the per-domain cap (--max-events-per-domain).",
                       st.events_elided)
        yield _by_label(PREFIX + "records_published", "DomainRecords produced, by kind.", "kind",
                        {**dict.fromkeys((k.value for k in RecordKind), 0), **st.records_by_kind})
        yield _counter("resyncs_completed", "Resyncs whose records were all acknowledged and inventory published.",
                       st.resyncs_completed)
        yield _counter("resyncs_deferred", "Scheduled resyncs put off while Kafka was unreachable.",
                       st.resyncs_deferred)
        yield _gauge("resync_duration_seconds", "Duration of the latest completed resync, listing to inventory.",
                     st.resync_last_seconds)
        yield _gauge("last_resync_completion_timestamp_seconds",
                     "When the latest resync completed, in seconds since the epoch.", st.resync_last_completed_at)
        yield _gauge("domains_pending", "Domains with events or a resync waiting for their next record.",
                     st.domains_pending)
        yield _gauge("domains_in_flight", "Domains with a record produced and not yet acknowledged.",
                     st.domains_in_flight)
        yield _gauge("oldest_pending_age_seconds", "How long the oldest pending work has waited.",
                     st.oldest_waiting_s)
        yield _gauge("libvirt_connected", "1 while the libvirt connection is up.", int(st.libvirt_connected))
        yield _counter("libvirt_reconnects", "libvirt reconnections after a lost connection.",
                       st.libvirt_reconnects)
        yield _counter("kafka_delivery_errors", "Failed Kafka deliveries (each message is produced again).",
                       st.kafka_delivery_errors)
        yield _counter("kafka_redeliveries", "Record sequences produced again after a failed delivery.",
                       st.kafka_redeliveries)
        yield _counter("kafka_client_errors", "Client-level Kafka errors (e.g. all brokers down).",
                       st.kafka_client_errors)
        yield _gauge("producer_queue_messages", "Messages in the producer's queue, not yet acknowledged.",
                     st.producer_queue)
        yield _gauge("last_version", "The highest version issued (or restored) by this agent.", st.last_version)
        yield _gauge("owned_domains", "Domains in the latest published inventory.", st.owned_domains)
        yield _gauge("handed_off_domains", "Domains handed off to another host (migrated away), kept silent.",
                     st.handed_off_domains)
        yield _gauge("incoming_domains", "Incoming migrations not yet claimed by this host.", st.incoming_domains)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc)
    if value is not None:  # no sample until there is a value (e.g. before the first resync)
        family.add_metric([], value)
    return family


def _by_label(name: str, doc: str, label: str, values: Mapping[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key in sorted(values):
        family.add_metric([key], values[key])
    return family

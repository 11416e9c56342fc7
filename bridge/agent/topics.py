"""The agent's topics: creating them compacted, and refusing topics that are not compacted."""

from __future__ import annotations

import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from bridge.errors import UserError
from bridge.kafka_problems import KAFKA_CONFIG_PLACES, ProblemWatcher, error_text
from bridge.kafka_settings import KafkaSettings
from bridge.logging_setup import librdkafka_logger

log = logging.getLogger(__name__)

DEFAULT_COMPACTION_LAG = 60.0
"""Seconds: the ``--compaction-lag`` the agent creates its topics with, as ``max.compaction.lag.ms``."""


def compaction_lags_ms(lag: float) -> dict[str, int]:
    """``max.compaction.lag.ms`` per topic kind for a ``--compaction-lag`` of ``lag`` seconds.

    A stock broker never forces compaction and rolls a segment only after ``segment.ms`` (7 days),
    and the active segment is never compacted, so a fresh consumer would read a week of records. With
    the lag set, the broker rolls the active segment once its first record is that old (KIP-354) and
    the cleaner compacts it soon after: what a fresh consumer reads is each key's latest message plus
    about two lags of history. Every resync rewrites each domain once, so on the domains topic that
    history is about 2 x lag / ``--resync-interval`` of the fleet (0.4 x at the defaults). The price:
    a consumer more than a lag or two behind reads each domain's latest record, not every record in
    between. The hosts topic has the same lag: it gets a HostRecord per host per resync interval (and
    per status change), so its history is the same fraction of its hosts; with ten times the lag it
    held about five HostRecords per host, each with its inventory, and a fresh consumer read them all.
    """
    ms = int(lag * 1000)
    return {"domains": ms, "heartbeats": ms, "hosts": ms}


class Admin(AdminClient):
    """An admin client that remembers the security problems librdkafka reports (see ProblemWatcher)."""

    def __init__(self, config: dict[str, Any], problems: ProblemWatcher) -> None:
        conf: dict[str, Any] = {**config, "error_cb": problems}
        super().__init__(conf)
        self.problems = problems
        self.client_config = config


def admin_client(client_config: dict[str, str]) -> Admin:
    """An admin client for the configured cluster.

    Its librdkafka lines go to the ``librdkafka.admin`` logger at DEBUG at most: an unreachable
    cluster at start-up logs a burst of connection failures that the one-line UserError already says.
    They are queued until :func:`serve_logs` (or another ``poll``) hands them over.
    """
    config: dict[str, Any] = {**client_config, "logger": librdkafka_logger("admin", max_level=logging.DEBUG)}
    try:
        return Admin(config, ProblemWatcher(client_config))
    except (KafkaException, ValueError, TypeError) as exc:
        raise UserError(f"bad Kafka client setting in {KAFKA_CONFIG_PLACES}: "
                        f"{error_text(exc, client_config)}") from None


def serve_logs(admin: AdminClient) -> None:
    """Hand librdkafka's queued log lines (and error callbacks) to Python now."""
    admin.poll(0)


def check_reachable(admin: AdminClient, bootstrap: str, timeout: float) -> int:
    """The number of brokers, or UserError naming the unreachable bootstrap servers.

    With an :class:`Admin`, a refused login or an untrusted certificate ends the wait at once with a
    UserError naming the setting to fix (``sasl.password``, ``ssl.ca.location``…), secrets masked.
    """
    problems = admin.problems if isinstance(admin, Admin) else None
    config: dict[str, Any] = admin.client_config if isinstance(admin, Admin) else {}
    deadline = time.monotonic() + timeout
    attempt = min(1.0, timeout)
    while True:
        try:
            meta = admin.list_topics(timeout=max(0.1, min(attempt, deadline - time.monotonic())))
            return len(meta.brokers)
        except KafkaException as exc:
            failure = exc
        serve_logs(admin)
        problem = problems.problem if problems is not None else None
        if problem is not None and problem.definite:
            raise UserError(problem.message)
        if time.monotonic() >= deadline:
            break
        attempt *= 2
    if problem is not None:
        raise UserError(f"{problem.message} (no answer from --bootstrap-servers {bootstrap} within {timeout:g}s)")
    raise UserError(
        f"cannot reach Kafka at --bootstrap-servers {bootstrap} within {timeout:g}s: {error_text(failure, config)}"
    )


def prepare_topics(kafka: KafkaSettings, *, partitions: int, replication_factor: int | None,
                   control_topic: str | None, timeout: float, compaction_lag: float = DEFAULT_COMPACTION_LAG) -> None:
    """Before the agent starts: Kafka reachable within ``timeout``, and the domains, hosts and (if set)
    heartbeats and control topics present and compacted, created if missing. ``replication_factor`` None means
    min(3, number of brokers). UserError for anything the user must fix."""
    admin = admin_client(kafka.client_config())
    try:
        brokers = check_reachable(admin, kafka.bootstrap_servers, timeout)
        rf = replication_factor or min(3, brokers)
        # acks=all only protects what min.insync.replicas replicas hold: with RF 3, require 2 so
        # losing one broker loses no acknowledged record (a stock broker defaults to 1).
        extra = {"min.insync.replicas": "2"} if rf >= 3 else {}
        topics = {kafka.domains_topic: partitions, kafka.hosts_topic: min(3, partitions)}
        lags = compaction_lags_ms(compaction_lag)
        per_topic = {kafka.domains_topic: _lag_config(lags["domains"]), kafka.hosts_topic: _lag_config(lags["hosts"])}
        if kafka.heartbeats:
            topics[kafka.heartbeats] = min(3, partitions)
            per_topic[kafka.heartbeats] = _lag_config(lags["heartbeats"])
        if control_topic:
            topics[control_topic] = 1  # a signal per target host or migrated domain, compacted: small
        ensure_compacted_topics(admin, topics, rf, extra_config=extra, timeout=max(10.0, timeout),
                                per_topic_config=per_topic)
    finally:
        serve_logs(admin)


def ensure_compacted_topics(
    admin: AdminClient,
    topics: dict[str, int],
    replication_factor: int,
    extra_config: dict[str, str] | None = None,
    timeout: float = 30.0,
    per_topic_config: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create missing ``{topic: partitions}`` as compacted topics; refuse existing non-compacted ones.

    ``extra_config`` goes to every created topic, ``per_topic_config[topic]`` to that one too. An
    existing topic's settings are left alone (``doctor`` reports them).
    """
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t not in existing]
    if missing:
        config = {"cleanup.policy": "compact", **(extra_config or {})}
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=topics[t], replication_factor=replication_factor,
                      config={**config, **(per_topic_config or {}).get(t, {})})
             for t in missing],
            operation_timeout=timeout, request_timeout=timeout,
        )
        for name, fut in futures.items():
            try:
                fut.result(timeout)
                log.info("created compacted topic %s (%d partitions, RF %d)", name, topics[name],
                         replication_factor)
            except KafkaException as exc:
                if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another agent won the race
                    raise UserError(f"cannot create topic {name}: {exc.args[0].str()}") from None
    for name in topics:
        policy = _cleanup_policy(admin, name, timeout)
        if "compact" not in policy.split(","):
            raise UserError(
                f"topic {name} has cleanup.policy={policy}; the bridge needs a compacted topic "
                f"(cleanup.policy=compact) so the log keeps every domain's latest record. "
                f"Fix it with: kafka-configs --alter --entity-type topics --entity-name {name} "
                f"--add-config cleanup.policy=compact"
            )


def _cleanup_policy(admin: AdminClient, topic: str, timeout: float) -> str:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)

    def describe() -> str:
        result: Any = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
        return str(result["cleanup.policy"].value)

    # A topic just created may be unknown to the broker answering for a moment (metadata propagation).
    retrying = Retrying(
        retry=retry_if_exception(lambda e: isinstance(e, KafkaException)
                                 and e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART),
        stop=stop_after_delay(min(timeout, 10.0)), wait=wait_exponential(multiplier=0.05, max=1.0), reraise=True,
    )
    try:
        return retrying(describe)
    except KafkaException as exc:
        raise UserError(f"cannot read the configuration of topic {topic}: {exc.args[0].str()}") from None


def _lag_config(ms: int) -> dict[str, str]:
    return {"max.compaction.lag.ms": str(ms)}

"""``libvirt-kafka-bridge state``: the fleet's current domains, rebuilt from the topics alone."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from bridge.cli.common import KAFKA_OPTIONS
from bridge.config import Option, add_options, parse_duration, parse_positive_int, resolve
from bridge.consumer import ConsumerError, Informer, Snapshot
from bridge.consumer.reflector import KafkaAccessError
from bridge.errors import UserError
from bridge.kafka_settings import KafkaSettings
from bridge.records import DomainRecord

VIEW_OPTIONS: tuple[Option, ...] = (
    Option("sync_timeout", "how long to wait for the view to catch up with the topics", 30.0, parse_duration,
           metavar="DURATION"),
    Option("stale_after", "a host is stale after this many heartbeat intervals without a HostRecord", 3,
           parse_positive_int, metavar="N"),
)
OPTIONS: tuple[Option, ...] = (*KAFKA_OPTIONS, *VIEW_OPTIONS)

DESCRIPTION = """\
Read both topics from the beginning, rebuild every domain's current state the way the consumer
library does (newest version wins, deletes and tombstones remove, host inventories repair missed
deletes), and print it. Needs only Kafka: libvirt is never contacted.

UNKNOWN marks domains whose state their host cannot vouch for right now: "stale" when the host stopped
heartbeating (--stale-after intervals), "libvirt unreachable" when its agent runs but cannot reach
libvirt. They are never dropped from the view for it; only the host's next resync can remove them.
"""

EPILOG = """\
examples:
  libvirt-kafka-bridge state --bootstrap-servers kafka1:9092
  libvirt-kafka-bridge state --host hv01 --state running --state paused
  libvirt-kafka-bridge state --output json | jq -r '.[] | select(.unknown) | .name'
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "state", help="print the fleet's current domains, rebuilt from the topics",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filter_arguments(parser)
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table",
                        help="a table, or a JSON array of objects (default: table)")
    add_options(parser, OPTIONS)
    parser.set_defaults(execute=execute)


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", action="append", metavar="HOST_ID",
                        help="only domains of this host (repeatable)")
    parser.add_argument("--state", action="append", metavar="STATE", type=str.upper,
                        help="only domains in this state, e.g. running, shutoff (repeatable)")


def execute(args: argparse.Namespace) -> int:
    values = resolve(args, OPTIONS)
    informer = open_synced_informer(values)
    try:
        snapshot = informer.list()
    finally:
        informer.stop()
    records = [r for r in snapshot.records() if matches(r, args.host, args.state)]
    if args.output == "json":
        json.dump([domain_json(r, snapshot.unknown_reason(r.uuid)) for r in records], sys.stdout, indent=2)
        print()
    else:
        print_table(records, snapshot, snapshot.taken_at)
    return 0


def open_synced_informer(values: dict[str, Any]) -> Informer:
    """A started informer whose view has caught up; UserError (exit 2) if it cannot within the timeout."""
    settings = KafkaSettings.from_values(values)
    informer = Informer(settings, codec=settings.codec(), stale_after_intervals=values["stale_after"])
    informer.start()
    try:
        timeout: float = values["sync_timeout"]
        if not informer.wait_for_sync(timeout):
            reason = informer.last_error or "still reading"
            raise UserError(
                f"no complete view of {settings.domains_topic} and {settings.hosts_topic} at "
                f"{settings.bootstrap_servers} within {timeout:g} s: {reason} "
                f"(--sync-timeout waits longer)")
    except ConsumerError as exc:
        informer.stop()
        # Refused credentials or an untrusted certificate: the reflector's message names the setting.
        cause = exc.__cause__
        raise UserError(str(cause if isinstance(cause, KafkaAccessError) else exc)) from None
    except BaseException:
        informer.stop()
        raise
    return informer


def matches(record: DomainRecord, hosts: Sequence[str] | None, states: Sequence[str] | None) -> bool:
    return (not hosts or record.host in hosts) and (not states or (record.state or "") in states)


def domain_json(record: DomainRecord, unknown: str | None) -> dict[str, Any]:
    """One domain as a JSON object (the ``--output json`` element); ``unknown`` is why its state is unknown."""
    return {
        "uuid": record.uuid,
        "name": record.name,
        "host": record.host,
        "state": record.state,
        "reason": record.reason,
        "active": record.active,
        "persistent": record.persistent,
        "version": record.version,
        "kind": record.kind.value,
        "observed_at": iso_time(record.observed_at),
        "events_elided": record.events_elided,
        "stale": unknown == "stale",
        "unknown": unknown is not None,
        "unknown_reason": unknown,
    }


def print_table(records: Iterable[DomainRecord], snapshot: Snapshot, now: int) -> None:
    header = ("HOST", "NAME", "UUID", "STATE", "REASON", "VERSION", "AGE", "UNKNOWN")
    rows = [(r.host, r.name, r.uuid, r.state or "-", r.reason or "-", str(r.version),
             age(now - r.observed_at), snapshot.unknown_reason(r.uuid) or "")
            for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def iso_time(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def age(micros: int) -> str:
    """kubectl-style age: 42s, 7m, 5h, 3d."""
    seconds = max(0, micros // 1_000_000)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 120 * 60:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86_400}d"

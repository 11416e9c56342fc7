"""``libvirt-kafka-bridge watch``: the current domains, then one line per change, like ``kubectl get -w``."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from types import FrameType
from typing import Any

from bridge.cli.state import OPTIONS, add_filter_arguments, domain_json, matches, open_synced_informer
from bridge.config import add_options, resolve
from bridge.consumer import Change, ChangeCause, ChangeType, ConsumerError, Informer, PositionExpired, Watch
from bridge.errors import UserError
from bridge.records import DomainRecord

DESCRIPTION = """\
Print the fleet's current domains (event LISTED), then one line for every change to the view as it
happens: ADDED, UPDATED or DELETED, with what caused it (the libvirt events a record reports, a
DELETED record, a tombstone, or a host inventory that no longer lists the domain). Runs until
Ctrl-C or SIGTERM, then exits 0. Reads only Kafka.
"""

EPILOG = """\
examples:
  libvirt-kafka-bridge watch --host hv01
  libvirt-kafka-bridge watch --output json | jq -c 'select(.event == "DELETED")'
"""

_COLUMNS = (("EVENT", 8), ("HOST", 12), ("NAME", 20), ("UUID", 36), ("STATE", 10), ("REASON", 14),
            ("VERSION", 16), ("DETAIL", 0))
_CAUSES = {
    ChangeCause.DELETED: "DELETED record",
    ChangeCause.TOMBSTONE: "tombstone",
    ChangeCause.INVENTORY: "not in its host's inventory (missed delete)",
}


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "watch", help="print the current domains, then every change as it happens",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_filter_arguments(parser)
    parser.add_argument("--output", "-o", choices=["table", "json"], default="table",
                        help="aligned lines, or one JSON object per line (default: table)")
    add_options(parser, OPTIONS)
    parser.set_defaults(execute=execute)


class _WatchStopped(Exception):
    """Raised in the main thread by SIGINT/SIGTERM to end the watch."""


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    raise _WatchStopped


def execute(args: argparse.Namespace) -> int:
    values = resolve(args, OPTIONS)
    # Signals interrupt the blocking wait for the next change; only the main thread can own them.
    handle = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if handle else {}
    informer: Informer | None = None
    try:
        informer = open_synced_informer(values)
        _Printer(args.output == "json", args.host, args.state).run(informer)
    except (_WatchStopped, BrokenPipeError):
        pass
    except ConsumerError as exc:
        raise UserError(str(exc)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if informer is not None:
            informer.stop()
    return 0


class _Printer:
    def __init__(self, as_json: bool, hosts: list[str] | None, states: list[str] | None) -> None:
        self._json = as_json
        self._hosts = hosts
        self._states = states

    def run(self, informer: Informer) -> None:
        if not self._json:
            self._line([name for name, _ in _COLUMNS])
        while True:
            try:
                watch = self._list(informer)
            except PositionExpired:
                continue  # more changes than the history holds came between list and watch: list again
            with watch:
                for change in watch:
                    self._change(change, informer)
            return  # the informer stopped

    def _list(self, informer: Informer) -> Watch:
        snapshot = informer.list()
        for record in snapshot.records():
            unknown = snapshot.unknown_reason(record.uuid)
            self._emit("LISTED", record, f"{unknown} host" if unknown else "", unknown)
        return informer.watch_from(snapshot.position)

    def _change(self, change: Change, informer: Informer) -> None:
        record = change.record
        if change.type is ChangeType.DELETED:
            detail = _CAUSES.get(change.cause, change.cause.value)
        else:
            detail = _events(change.new) if change.new is not None else ""
        self._emit(change.type.value, record, detail, _unknown_reason(record.host, informer))

    def _emit(self, event: str, record: DomainRecord, detail: str, unknown: str | None) -> None:
        if not matches(record, self._hosts, self._states):
            return
        if self._json:
            print(json.dumps({"event": event, "detail": detail, "domain": domain_json(record, unknown)}),
                  flush=True)
            return
        self._line([event, record.host, record.name, record.uuid, record.state or "-", record.reason or "-",
                    str(record.version), detail])

    @staticmethod
    def _line(cells: list[str]) -> None:
        text = " ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
        print(text.rstrip(), flush=True)


def _unknown_reason(host: str, informer: Informer) -> str | None:
    if host in informer.stale_hosts():
        return "stale"
    return "libvirt unreachable" if host in informer.unreachable_hosts() else None


def _events(record: DomainRecord) -> str:
    labels = ", ".join(e.label() for e in record.events)
    if record.events_elided:
        labels += f" (+{record.events_elided} elided)"
    return labels or record.kind.value.lower()


"""``libvirt-kafka-bridge doctor``: check, with the settings of ``run``, everything ``run`` depends on.

One line per check, ``ok``, ``WARN`` or ``FAIL``; every WARN and FAIL line ends with the fix. Exit 0
when nothing failed (warnings allowed), 1 when a check failed, 2 for bad settings (as ``run``).
Nothing is written: no topic is created or altered, nothing is produced, the state directory is only
probed (a temporary file, removed) and its lock only tried.

Rules the checks settle (the contract leaves them open):

- **Tombstone retention**: ``delete.retention.ms`` of both topics must be at least
  :data:`TOMBSTONE_RESYNCS` x ``--resync-interval``. A consumer that was down and resumes from a
  saved position before a delete learns of it from the tombstone, or else from the host's next resync
  inventory, published within one resync interval while the host is healthy. Compaction may drop a
  tombstone once it is ``delete.retention.ms`` old, so the tombstone must outlive the time a resync can
  take to repair the delete; 3 intervals tolerate two missed resyncs, the same bound at which the
  consumer calls a host stale and the shipped alert calls a resync overdue. Every host of the fleet
  should use the same (or a shorter) ``--resync-interval`` than the one checked.
- **Replication**: ``min.insync.replicas`` above the replication factor is a failure (``acks=all``
  writes are refused); RF below 3 with 3 or more brokers, or ``min.insync.replicas`` below 2 with
  RF 3 or more, is a warning (one broker lost can lose acknowledged records).
- **Compaction lag**: a topic whose history is not compacted within a day (``max.compaction.lag.ms``
  and ``segment.ms`` both unset or longer) is a warning: a fresh consumer reads all of it (every
  heartbeat too, with its inventory when heartbeats share the hosts topic). The agent creates its topics with
  ``--compaction-lag`` (:func:`bridge.agent.topics.compaction_lags_ms`), the value the fix names.
- **State directory in use**: a warning, not a failure: the lock is held by the running agent of
  this host when ``doctor`` runs next to it; ``run`` with the same directory would exit 2.
- **Clock**: the README's bound, ``--max-clock-skew`` (the one ``run`` versions hand-offs by). Without
  producing anything, ``doctor`` reads the latest heartbeat of every host on the hosts topic: a
  heartbeat time in this host's future by more than the bound means a clock disagrees (a clock
  *behind* this one looks like an old heartbeat, so only being ahead is detectable this way). When
  the hosts topic stamps ``LogAppendTime``, the broker's own clock is compared too.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt

from bridge.agent.agent import AgentSettings
from bridge.agent.event_capture import EventCapture, supported_event_ids
from bridge.agent.event_loop import LibvirtEventLoop
from bridge.agent.libvirt_session import one_line
from bridge.agent.topics import serve_logs
from bridge.cli import run
from bridge.cli.doctor_kafka import clock_check, kafka_check, registry_check, topic_checks
from bridge.cli.doctor_result import FAIL, OK, SKIP, TOMBSTONE_RESYNCS, WARN, Result
from bridge.config import add_options, resolve

DESCRIPTION = f"""\
Check what `run` needs, with the same settings (flags, BRIDGE_* environment, --config file):
libvirt reachable read-only and event registration; Kafka reachable with the security settings;
both topics compacted, replication sane, delete.retention.ms at least {TOMBSTONE_RESYNCS} x --resync-interval
(so a consumer that was down still sees tombstones until a resync can repair the delete); the state
directory writable and not in use; host clocks within --max-clock-skew (read from the heartbeats).
One line per check; a WARN or FAIL line ends with the fix. Nothing is written to Kafka or libvirt.
Exit status: 0 all passed (warnings allowed), 1 a check failed, 2 bad settings.
"""


def add_parser(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "doctor", help="check libvirt, Kafka, the topics, the state directory and the clock with run's settings",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser, run.OPTIONS)
    parser.set_defaults(execute=execute)


def execute(args: argparse.Namespace) -> int:
    settings = run.settings_from(resolve(args, run.OPTIONS))  # bad settings: UserError, exit 2
    counts = dict.fromkeys((OK, WARN, FAIL, SKIP), 0)
    for result in diagnose(settings):
        print(result.line(), flush=True)
        counts[result.status] += 1
    print(f"doctor: {counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failed, {counts[SKIP]} skipped")
    return 1 if counts[FAIL] else 0


def diagnose(s: AgentSettings) -> Iterator[Result]:
    """Every check, in order; later checks that depend on an earlier one are skipped when it fails."""
    yield from _libvirt_checks(s)
    yield _state_dir_check(s.state_dir)
    admin, result = kafka_check(s)
    yield result
    if admin is None:
        yield Result(SKIP, "topics", "Kafka not reachable")
        yield Result(SKIP, "clock", "Kafka not reachable")
        return
    try:
        yield from topic_checks(admin, s)
        yield from registry_check(s)
        yield clock_check(s)
    finally:
        serve_logs(admin)


# -- libvirt ---------------------------------------------------------------------------------------------


def _libvirt_checks(s: AgentSettings) -> Iterator[Result]:
    mode = "read-only" if s.read_only else "read-write"
    loop = LibvirtEventLoop()  # registered before the first open, as the agent does
    loop.start()
    try:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        try:
            conn = libvirt.openReadOnly(s.libvirt_uri) if s.read_only else libvirt.open(s.libvirt_uri)
        except libvirt.libvirtError as exc:
            yield Result(FAIL, "libvirt", f"cannot connect to --libvirt-uri {s.libvirt_uri} {mode}: {one_line(exc)}",
                         "start libvirtd (or virtqemud) on this host, or set --libvirt-uri to where it listens; "
                         "for qemu:///system the read-only socket is /run/libvirt/libvirt-sock-ro and must be "
                         "visible to the agent (systemd: ReadOnlyPaths=/run/libvirt; Kubernetes: the hostPath "
                         "mount of /run/libvirt)")
            yield Result(SKIP, "libvirt events", "libvirt not reachable")
            return
        try:
            v = conn.getLibVersion()
            version = f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"
            if s.read_only:
                yield Result(OK, "libvirt", f"connected to {s.libvirt_uri} read-only (libvirt {version})")
            else:
                yield Result(WARN, "libvirt", f"connected to {s.libvirt_uri} read-write (libvirt {version}); "
                             "the agent only reads", "set read_only = true (--read-only true): a read-only "
                             "connection can never change a domain")
            yield _events_check(conn)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
    finally:
        loop.stop()


def _events_check(conn: libvirt.virConnect) -> Result:
    capture = EventCapture(lambda _uuid, _name, _event: None, lambda: time.time_ns() // 1000)
    capture.register(conn)
    try:
        registered = len(capture.registered)
        supported = len(supported_event_ids())
        if "LIFECYCLE" not in capture.registered:
            return Result(FAIL, "libvirt events", f"registering the LIFECYCLE callback failed "
                          f"({registered} of {supported} event ids registered)",
                          "check the daemon's log; an event registration refused on a read-only connection "
                          "means an access-control driver (polkit ACLs) denies domain:getattr to this user")
        return Result(OK, "libvirt events", f"{registered} of the {supported} domain event ids this "
                      "libvirt-python knows registered")
    finally:
        capture.deregister(conn)


# -- state directory -------------------------------------------------------------------------------------


def _state_dir_check(state_dir: Path) -> Result:
    name = "state dir"
    existing = state_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return Result(FAIL, name, f"--state-dir {state_dir}: {existing} is not a directory",
                      "point --state-dir at a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Result(FAIL, name, f"--state-dir {state_dir}: cannot write in {existing} ({exc.strerror})",
                      f"make {state_dir} writable by the agent's user (systemd: StateDirectory=; "
                      "Kubernetes: the hostPath volume and its owner)")
    if existing != state_dir:
        return Result(OK, name, f"{state_dir} does not exist yet; run creates it in writable {existing}")
    lock = state_dir / "agent.lock"
    if lock.exists():
        try:
            with lock.open("r") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return Result(WARN, name, f"{state_dir} is writable and in use by a running agent (it holds "
                                  f"{lock.name})", "nothing if that is this host's agent; otherwise stop the other "
                                  "agent or give this one its own --state-dir (run exits 2 on a directory in use)")
                fcntl.flock(f, fcntl.LOCK_UN)
        except OSError as exc:
            return Result(FAIL, name, f"cannot open {lock} ({exc.strerror})",
                          f"make {state_dir} and its files readable and writable by the agent's user")
    return Result(OK, name, f"{state_dir} is writable and not in use")


# -- Kafka -----------------------------------------------------------------------------------------------

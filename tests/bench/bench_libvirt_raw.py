"""Benchmark 1: raw libvirt, events/s delivered to a bare LIFECYCLE callback over ``test+unix``.

This process runs libvirt's event loop (the agent's process-wide pump,
:class:`bridge.agent.event_loop.LibvirtEventLoop`) and registers one LIFECYCLE callback that only
counts; a generator subprocess defines then undefines N fresh domains as fast as it can (2N events).
The rate is events / (last event received - first event received), both on this process's clock.
It is the ceiling any agent on this daemon can reach.

Then the snapshot-read ceiling: a pool of shut-off domains is defined, and N threads (1, 4, 8) share
one read-only connection, as the agent's ``snapshot-reader`` threads do, each reading full snapshots
round-robin over the pool with exactly the calls of the agent's original reader
(``lookupByUUIDString``, ``XMLDesc(0)``, ``state()``, ``isPersistent()``: four round-trips) for a
fixed time; plus the bare round-trip rate (``state()`` on a held domain, 4 threads).

``python -m tests.bench.bench_libvirt_raw``
"""

from __future__ import annotations

import sys
import threading
import time
import uuid as uuid_mod

import libvirt

from bridge.agent.event_loop import LibvirtEventLoop
from tests.bench import (
    BenchEnv,
    BenchResult,
    main_one,
    proc_cpu_seconds,
    progress,
    run_generator,
    start_generator,
)

NAME = "libvirt_raw"
TITLE = "raw libvirt events -> bare callback"
NEEDS = ("libvirt",)

DOMAINS = 3000
TIMEOUT = 120.0
SNAPSHOT_POOL = 300
SNAPSHOT_THREADS = (1, 4, 8)
SNAPSHOT_SECONDS = 2.0


class _Counter:
    """The bare callback: counts this run's events and notes the first and last arrival."""

    def __init__(self, prefix: str, expected: int) -> None:
        self.prefix = prefix
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()

    def __call__(self, _conn, dom, _event, _detail, _opaque) -> None:
        if not dom.name().startswith(self.prefix):  # the name travels with the event: no RPC
            return
        t = time.perf_counter()
        if self.count == 0:
            self.first = t
        self.last = t
        self.count += 1
        if self.count >= self.expected:
            self.done.set()


def _full_snapshot(conn: libvirt.virConnect, uuid: str) -> None:
    """The agent's original snapshot read: lookup, XML, state, flags (4 round-trips)."""
    dom = conn.lookupByUUIDString(uuid)
    dom.ID()
    dom.name()
    dom.XMLDesc(0)
    dom.state()
    dom.isPersistent()


def _reads_per_s(conn: libvirt.virConnect, work: list, threads: int, seconds: float, read) -> float:
    """``read(conn, item)`` round-robin over ``work`` by ``threads`` threads for ``seconds``: reads/s."""
    counts = [0] * threads
    stop = threading.Event()
    start_line = threading.Barrier(threads + 1)

    def worker(i: int) -> None:
        start_line.wait()
        n, k = 0, i
        while not stop.is_set():
            read(conn, work[k % len(work)])
            n += 1
            k += threads
        counts[i] = n

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    start_line.wait()
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in pool:
        t.join(30)
    return sum(counts) / (time.perf_counter() - t0)


def snapshot_limits(env: BenchEnv, result: BenchResult) -> None:
    """Snapshot reads per second with N threads on one connection (the agent's reader setup)."""
    prefix = f"snap-{uuid_mod.uuid4().hex[:6]}"
    # Connected first: the test driver's default state lives only while some connection holds it.
    conn = libvirt.openReadOnly(env.test_uri)
    rates: dict[str, float] = {}
    try:
        progress(f"{NAME}: defining {SNAPSHOT_POOL} domains for the snapshot-read limit")
        run_generator("pool-define", env.test_uri, prefix, pool=SNAPSHOT_POOL)
        doms = [d for d in conn.listAllDomains(0) if d.name().startswith(prefix + "-")]
        uuids = [d.UUIDString() for d in doms]
        for n in SNAPSHOT_THREADS:
            rate = _reads_per_s(conn, uuids, n, SNAPSHOT_SECONDS, _full_snapshot)
            rates[str(n)] = round(rate, 1)
            progress(f"{NAME}: full snapshot reads, {n} thread(s): {rate:,.0f}/s")
            result.add(f"raw_snapshot_reads_per_s_t{n}", f"libvirt raw snapshot reads, {n} thread(s)", rate,
                       "snapshots/s", "full snapshot reads (lookupByUUIDString + XMLDesc(0) + state() + "
                       "isPersistent(): the agent's original calls) per second by N threads sharing one "
                       f"read-only connection, round-robin over {SNAPSHOT_POOL} shut-off domains, "
                       f"{SNAPSHOT_SECONDS:.0f} s each")
        rtt = _reads_per_s(conn, doms, 4, SNAPSHOT_SECONDS, lambda _c, d: d.state())
        progress(f"{NAME}: bare round-trips (state() on a held domain), 4 threads: {rtt:,.0f}/s")
        result.add("raw_round_trips_per_s", "libvirt raw round-trips (state()), 4 threads", rtt, "calls/s",
                   "virDomainGetState on held domain objects, 4 threads on one read-only connection: the "
                   "daemon's bare request rate")
    finally:
        run_generator("pool-remove", env.test_uri, prefix)
        conn.close()
    result.details["snapshot_reads_per_s"] = rates
    result.details["round_trips_per_s_4_threads"] = round(rtt, 1)


def run(env: BenchEnv, domains: int = DOMAINS) -> BenchResult:
    result = BenchResult(NAME, TITLE, params={"domains": domains, "events": 2 * domains, "uri": "test+unix"})
    prefix = f"raw-{uuid_mod.uuid4().hex[:6]}"
    counter = _Counter(prefix + "-", 2 * domains)
    with LibvirtEventLoop():
        conn = libvirt.openReadOnly(env.test_uri)
        try:
            cb_id = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, counter, None)
            try:
                progress(f"{NAME}: generator: {domains} x (define + undefine) -> {2 * domains} events")
                daemon = env.libvirtd_pid()
                daemon_cpu0, me_cpu0 = proc_cpu_seconds(daemon or 0), time.process_time()
                gen = start_generator("tight", env.test_uri, prefix, count=domains)
                try:
                    deadline = time.monotonic() + TIMEOUT
                    while not counter.done.wait(0.2):
                        gen.check()
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{counter.count}/{counter.expected} events after {TIMEOUT:.0f}s")
                    summary = gen.result()
                    daemon_cpu, me_cpu = proc_cpu_seconds(daemon or 0) - daemon_cpu0, time.process_time() - me_cpu0
                finally:
                    gen.kill()
            finally:
                conn.domainEventDeregisterAny(cb_id)
        finally:
            conn.close()
    window = counter.last - counter.first
    events_per_s = (counter.count - 1) / window if window > 0 else float("nan")
    progress(f"{NAME}: {counter.count} events in {window:.2f}s; generator made {summary['ops']} calls "
             f"in {summary['seconds']:.2f}s")
    result.add("raw_events_per_s", "libvirt raw events -> callback", events_per_s, "events/s",
               "LIFECYCLE events delivered to a bare Python callback over test+unix (libvirtd's test driver), "
               "(events - 1) / (last arrival - first arrival), while another process defines+undefines "
               "domains as fast as it can")
    result.add("raw_generator_calls_per_s", "libvirt define+undefine calls (generator)",
               summary["ops"] / summary["seconds"], "calls/s",
               "defineXML + undefine calls per second made by the generator process (one listener registered)")
    gen_s = summary["seconds"]
    result.details = {"events": counter.count, "window_s": round(window, 4), "generator": summary,
                      "cpu_pct_of_one_core": {"libvirtd": round(100 * daemon_cpu / gen_s, 1),
                                              "generator": round(100 * summary["cpu_s"] / gen_s, 1),
                                              "listener (this process)": round(100 * me_cpu / gen_s, 1)}}
    with LibvirtEventLoop():
        snapshot_limits(env, result)
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))

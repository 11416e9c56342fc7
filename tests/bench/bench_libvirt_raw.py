"""Benchmark 1: raw libvirt, events/s delivered to a bare LIFECYCLE callback over ``test+unix``.

This process runs libvirt's event loop (the agent's process-wide pump,
:class:`bridge.agent.event_loop.LibvirtEventLoop`) and registers one LIFECYCLE callback that only
counts; a generator subprocess defines then undefines N fresh domains as fast as it can (2N events).
The rate is events / (last event received - first event received), both on this process's clock.
It is the ceiling any agent on this daemon can reach.

``python -m tests.bench.bench_libvirt_raw``
"""

from __future__ import annotations

import sys
import threading
import time
import uuid as uuid_mod

import libvirt

from bridge.agent.event_loop import LibvirtEventLoop
from tests.bench import BenchEnv, BenchResult, main_one, proc_cpu_seconds, progress, start_generator

NAME = "libvirt_raw"
TITLE = "raw libvirt events -> bare callback"
NEEDS = ("libvirt",)

DOMAINS = 3000
TIMEOUT = 120.0


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
    return result


if __name__ == "__main__":
    sys.exit(main_one(sys.modules[__name__]))

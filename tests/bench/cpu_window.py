"""The CPU a benchmark phase used while its generator ran: the whole machine's and named processes'.

The throughput phases share two cores between the generator, libvirtd, the agent or the peer pipe, the
broker and the bench's consumer; whether a slower generator beside the agent waited for CPU or for
libvirtd shows in how busy the machine was while it ran (from ``/proc/stat``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from tests.bench import proc_cpu_seconds


def box_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not waiting for I/O) since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """CPU used from its creation to :meth:`stop` (the first call counts), machine-wide and by ``pids``."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._pids = dict(pids)
        self._t0, self._box0 = time.monotonic(), box_busy_seconds()
        self._procs0 = {name: proc_cpu_seconds(pid) for name, pid in self._pids.items()}
        self._end: tuple[float, float, dict[str, float]] | None = None

    def stop(self) -> None:
        if self._end is None:
            self._end = (time.monotonic(), box_busy_seconds(),
                         {name: proc_cpu_seconds(pid) for name, pid in self._pids.items()})

    def summary(self) -> dict[str, float]:
        """``box_busy_cores`` (of ``os.cpu_count()``), ``<name>_cpu_s`` and ``<name>_cpu_pct`` per process, and
        the window's length."""
        self.stop()
        assert self._end is not None
        t1, box1, procs1 = self._end
        span = max(t1 - self._t0, 1e-6)
        out = {"window_s": round(span, 3), "box_busy_cores": round((box1 - self._box0) / span, 2),
               "cores": float(os.cpu_count() or 1)}
        for name, before in self._procs0.items():
            out[f"{name}_cpu_s"] = round(procs1[name] - before, 2)
            out[f"{name}_cpu_pct"] = round(100 * (procs1[name] - before) / span, 1)
        return out

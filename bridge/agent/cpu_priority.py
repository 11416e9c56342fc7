"""The agent's CPU priority: below libvirtd, its clients and the guests when the host is busy.

An agent at the host's default priority competes for the same cores as libvirtd and the management
calls that drive it. On a busy host every such call then waits behind the agent's threads, and the
agent spends more CPU per event: it is woken for each event and reads one domain at a time. At a
lower priority the agent still gets any CPU that is idle, so a quiet host sees no difference. On a
busy host the agent runs a few milliseconds later, with more events queued. Coalescing and grouped
snapshot reads then do less work per event. Measured in ``docs/performance.md`` (2026-12-03).

Linux sets niceness per thread, and a new thread starts with its creator's. So :func:`lower_priority`
must run before the agent starts any thread, and everything the agent starts inherits it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

DEFAULT_NICE = 5
NICE_MAX = 19


def parse_nice(text: str) -> int:
    """A niceness from 0 (never lowers the priority) to 19 (the lowest)."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number from 0 to {NICE_MAX}") from None
    if not 0 <= value <= NICE_MAX:
        raise ValueError(f"{value} is outside 0 to {NICE_MAX} (0 never lowers the priority, {NICE_MAX} is the "
                         "lowest)")
    return value


def lower_priority(nice: int) -> int:
    """Run this process at niceness ``nice`` or lower priority; return the niceness now in force.

    A priority that is already lower (``Nice=`` in a systemd unit, ``nice -n``) is kept; raising a
    priority would need privileges the agent should not have. Call it before starting any thread.
    """
    if len(os.listdir("/proc/self/task")) > 1:  # native threads too (librdkafka, libvirt), not only Python's
        raise RuntimeError("lower_priority() must run before any other thread starts: threads keep their own niceness")
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current >= nice:
        return current
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:  # a sandbox that forbids setpriority: run as we are, and say so
        log.warning("could not lower the agent's CPU priority to nice %d: %s; running at nice %d", nice, exc,
                    current)
        return current
    return nice

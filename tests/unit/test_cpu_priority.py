"""The agent's CPU priority (:mod:`bridge.agent.cpu_priority`).

Each check runs in a child process: lowering the priority of pytest's own process would slow every
process the rest of the suite starts, since children inherit it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bridge.agent.cpu_priority import NICE_MAX, parse_nice


def _child(code: str, *, start_nice: int = 0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nice", "-n", str(start_nice), sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_parse_nice_takes_0_to_19_and_names_the_range_otherwise():
    assert parse_nice("0") == 0 and parse_nice("19") == NICE_MAX == 19 and parse_nice(" 7 ") == 7
    for bad in ("-1", "20", "low", "5.5", ""):
        with pytest.raises(ValueError, match="0 to 19"):
            parse_nice(bad)


def _base() -> int:
    """This process's niceness (a CI runner may itself run niced)."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if not 0 <= base <= NICE_MAX - 3:  # a negative one: lower_priority(0) raises it to 0, by design
        pytest.skip(f"the test process already runs at nice {base}")
    return base


def test_lowered_priority_holds_for_the_threads_started_after_it():
    want = _base() + 3
    # /proc is the kernel's own answer, per thread, not our bookkeeping.
    out = _child(f"""
        import os, threading
        from bridge.agent.cpu_priority import lower_priority
        print(lower_priority({want}))
        from tests.support.procfs import thread_niceness
        seen, started, hold = [], threading.Event(), threading.Event()
        def work():
            seen.append(os.getpriority(os.PRIO_PROCESS, 0))
            started.set()
            hold.wait()
        t = threading.Thread(target=work)
        t.start()
        started.wait(10)
        nices = thread_niceness(os.getpid())  # read while the new thread still runs
        hold.set(); t.join()
        print(seen[0], sorted(set(nices.values())), len(nices))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [str(want), f"{want} [{want}] 2"]


def test_a_priority_already_lower_is_kept():
    base = _base()
    out = _child(f"""
        from bridge.agent.cpu_priority import lower_priority
        print(lower_priority({base + 1}))
    """, start_nice=3)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(base + 3)


def test_zero_leaves_the_priority_alone():
    base = _base()
    out = _child("""
        import os
        from bridge.agent.cpu_priority import lower_priority
        print(lower_priority(0), os.getpriority(os.PRIO_PROCESS, 0))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{base} {base}"


def test_refused_once_another_thread_runs():
    # That thread, and any it starts, would keep the old priority: a half-lowered agent.
    out = _child("""
        import threading
        from bridge.agent.cpu_priority import lower_priority
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
        try:
            lower_priority(5)
        except RuntimeError as exc:
            print("refused:", exc)
        stop.set()
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: lower_priority() must run before any other thread starts")

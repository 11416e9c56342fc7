"""Process helpers shared by the dev-environment services."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

# The directory that holds pyproject.toml: devenv/_proc.py -> parents[1].
REPO_ROOT = Path(__file__).resolve().parents[1]

# Children get SIGTERM when the Python thread that started them dies, so a test run killed with
# SIGKILL does not leave brokers or daemons behind. Survives exec (no set-uid binaries in the chain).
PDEATHSIG = ("setpriv", "--pdeathsig", "TERM", "--")


class DevEnvError(RuntimeError):
    """A dev-environment service could not be set up, started or stopped."""


class WaitTimeout(DevEnvError, TimeoutError):
    """A condition did not become true before its deadline."""


def log_tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of ``path`` (empty if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    check: Callable[[], None] | None = None,
    interval: float = 0.1,
) -> float:
    """Poll ``ready`` until it returns True; return the seconds it took.

    ``check`` runs before each poll and raises to abort early (e.g. the process died).
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if check is not None:
            check()
        if ready():
            return time.monotonic() - start
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def hold(seconds: float, *, check: Callable[[], None] | None = None, interval: float = 0.1) -> None:
    """Run ``check`` every ``interval`` for ``seconds``: a window in which something must not happen
    (a negative check, so there is no state to wait on); ``check`` raises to fail at once. Without a
    check, a fault-timing or pacing pause that names itself as one."""
    deadline = time.monotonic() + seconds
    while True:
        if check is not None:
            check()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(interval, left))


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            # The state letter follows the parenthesised command name, which may contain spaces.
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def kill_pid(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc``, wait up to ``timeout`` s, then SIGKILL it; always reaps it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class Service:
    """A thing a test starts and must stop, even when it fails: ``with Service(...) as svc: ...``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

"""What the kernel says about a process, read from /proc."""

from __future__ import annotations

from pathlib import Path


def thread_niceness(pid: int) -> dict[str, int]:
    """Each live thread of ``pid`` (``"<name>/<tid>"``) and its niceness, from ``/proc/<pid>/task``."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            # comm may hold ")" or spaces: the fields after the last ")" start with field 3, state.
            nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended between listing and reading
        out[f"{name}/{task.name}"] = nice
    return out

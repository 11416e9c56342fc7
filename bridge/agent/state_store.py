"""The agent's state directory: the version floor and ownership roles (handed-off UUIDs), durable before publishing.

A SQLite database (``state.db``) in WAL mode with ``synchronous=FULL``. The version clock is host-wide
(:mod:`bridge.core.version_clock`: every version is above the last one this agent issued), so the only
version state a restart needs is a bound above every version ever issued: ``meta.max_version``.

The streamer keeps that bound a short *lease* ahead (:data:`VERSION_LEASE_US`): before it produces a
record whose version is not below the persisted bound, it raises the bound to ``max(version, now) +
lease`` in one fsynced transaction (one row, one WAL frame), and it renews the lease early, so a
record rarely waits for an fsync: about one per half lease while records flow, instead of one per
group of records. After a restart or SIGKILL the clock starts at the bound, above every version that
could have been published, so none can repeat or go down; and the pipeline first lets the wall clock
pass a bound at most two leases ahead (:func:`wait_out_lease`), so versions after a crash are not
ahead of the clock (the cross-host rule's ``--max-clock-skew`` margin stays whole). The one exception
is a clock lifted by a re-assertion request's version (:mod:`bridge.agent.reassert`), at most
:func:`~bridge.agent.reassert.plausible_ahead_us` ahead: a bound beyond two leases is then kept
without a wait, and versions run a little ahead of the clock until it catches up, as the version
rule allows. Earlier releases kept a
per-domain ``versions`` table, written in every transaction and never read; it is dropped on open.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bridge.core.version_clock import Clock
from bridge.errors import UserError

VERSION_LEASE_US = 250_000
"""How far ahead of the versions issued the persisted bound is kept (µs)."""


def wait_out_lease(floor: int, now: Clock, sleep: Callable[[float], object] = time.sleep) -> float:
    """Sleep until the wall clock passes ``floor`` when it is at most two leases ahead (the previous
    run's lease); a bound further ahead means the clock stepped back, and the clock's ``last + 1``
    rule handles it as before. Returns the seconds slept."""
    ahead = (floor - now()) / 1e6
    if 0 < ahead <= 2 * VERSION_LEASE_US / 1e6:
        sleep(ahead)  # a bounded wait for the clock itself, not for a condition
        return ahead
    return 0.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
DROP TABLE IF EXISTS versions;
CREATE TABLE IF NOT EXISTS ownership_roles (uuid TEXT PRIMARY KEY, role TEXT NOT NULL);
"""


class StateStore:
    """Owned by one thread at a time (the pipeline); opened at start-up, closed at shutdown."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.path = state_dir / "state.db"
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"--state-dir {state_dir} is not usable: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def max_version(self) -> int:
        """A bound at or above every version ever issued by an agent using this directory (0 when new)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'max_version'").fetchone()
        return int(row[0]) if row else 0

    def raise_floor(self, version: int) -> None:
        """Durably record that versions up to ``version`` were issued (records about to be produced, or a
        resync's ``listed_at``): one fsynced transaction, before anything carrying them is published."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES ('max_version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                (version,),
            )

    def ownership_roles(self) -> dict[str, str]:
        """Remembered ownership roles of UUIDs this host does not own (handed off, incoming)."""
        return {str(u): str(r) for u, r in self._db.execute("SELECT uuid, role FROM ownership_roles")}

    def save_ownership_roles(self, roles: Mapping[str, str]) -> None:
        """Replace the remembered ownership roles."""
        with self._transaction():
            self._db.execute("DELETE FROM ownership_roles")
            self._db.executemany("INSERT INTO ownership_roles (uuid, role) VALUES (?, ?)", roles.items())

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")

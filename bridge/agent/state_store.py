"""The agent's state directory: last versions and ownership roles (handed-off UUIDs), durable before publishing.

A SQLite database (``state.db``) in WAL mode with ``synchronous=FULL``: each batch of versions is one
fsynced transaction written *before* its records are produced, so neither a restart nor SIGKILL
mid-batch can make a version repeat or go down. Rows of deleted domains are dropped (the host-wide
maximum stays in ``meta``), so the file is bounded by the number of live domains.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from bridge.errors import UserError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS versions (uuid TEXT PRIMARY KEY, version INTEGER NOT NULL);
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
        """The highest version ever issued by an agent using this directory (0 when new)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'max_version'").fetchone()
        return int(row[0]) if row else 0

    def versions(self) -> dict[str, int]:
        """Last version per live domain UUID."""
        return {str(u): int(v) for u, v in self._db.execute("SELECT uuid, version FROM versions")}

    def save(self, versions: Mapping[str, int], deleted: Iterable[str] = ()) -> None:
        """Durably record issued ``versions`` (and forget ``deleted`` UUIDs) in one transaction."""
        gone = list(deleted)
        if not versions and not gone:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO versions (uuid, version) VALUES (?, ?) "
                "ON CONFLICT(uuid) DO UPDATE SET version = max(version, excluded.version)",
                versions.items(),
            )
            self._db.executemany("DELETE FROM versions WHERE uuid = ?", ((u,) for u in gone))
            if versions:
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('max_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
                    (max(versions.values()),),
                )

    def raise_floor(self, version: int) -> None:
        """Durably record that ``version`` was issued without a domain row (a resync's listed_at)."""
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

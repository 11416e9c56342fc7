"""A scripted libvirt host: domains, one connection, and the session the agent reads it through.

:class:`FakeConnection` serves ``listAllDomains`` (the resync listing), ``lookupByUUIDString`` (the
snapshot reader), ``getAllDomainStats`` and ``domainListGetStats`` (the state group); its domains
answer ``state``, ``XMLDesc``, ``isPersistent``, ``ID``, ``name`` and ``jobStats``. Scripts:
:meth:`FakeConnection.hide` makes the next N lookups of a UUID fail with ``Domain not found`` (a
fresh domain not readable yet); :meth:`FakeConnection.remove` makes a domain gone, handles
included; :meth:`FakeConnection.lose` breaks the connection (every call raises a system error,
``isAlive`` is False); :meth:`FakeConnection.refuse_bulk_stats` makes ``domainListGetStats``
fail. Calls are counted by (method, UUID) in :attr:`FakeConnection.calls`.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import libvirt

from bridge.agent.libvirt_session import ConnectionLost


def libvirt_error(code: int, message: str = "") -> libvirt.libvirtError:
    """A ``libvirtError`` whose ``get_error_code()`` is ``code``, as libvirt raises it."""
    text = message or f"libvirt error {code}"
    error = libvirt.libvirtError(text)
    error.err = (code, libvirt.VIR_FROM_NONE, text, libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
    return error


class FakeDomain:
    """One domain as libvirt reports it; ``state``/``reason`` are libvirt's ints."""

    def __init__(self, uuid: str, name: str, state: int = libvirt.VIR_DOMAIN_RUNNING,
                 reason: int = libvirt.VIR_DOMAIN_RUNNING_BOOTED, *, persistent: bool = True, domain_id: int = 1,
                 job: dict[str, Any] | Exception | None = None) -> None:
        self.uuid = uuid
        self.dom_name = name
        self.dom_state = state
        self.dom_reason = reason
        self.persistent = persistent
        self.domain_id = domain_id
        self.job: dict[str, Any] | Exception = job if job is not None else {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        self.conn: FakeConnection | None = None

    @property
    def active(self) -> bool:
        return self.dom_state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)

    # -- libvirt.virDomain ---------------------------------------------------------------------------

    def UUIDString(self) -> str:
        self._serve("UUIDString", local=True)
        return self.uuid

    def ID(self) -> int:
        self._serve("ID")
        return self.domain_id if self.active else -1

    def name(self) -> str:
        self._serve("name", local=True)
        return self.dom_name

    def state(self, flags: int = 0) -> list[int]:
        self._serve("state")
        return [self.dom_state, self.dom_reason]

    def XMLDesc(self, flags: int = 0) -> str:
        self._serve("XMLDesc")
        ident = f" id='{self.domain_id}'" if self.active else ""
        return f"<domain type='test'{ident}>\n  <name>{self.dom_name}</name>\n  <uuid>{self.uuid}</uuid>\n</domain>\n"

    def isPersistent(self) -> int:
        self._serve("isPersistent")
        return int(self.persistent)

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        self._serve("jobStats")
        if isinstance(self.job, Exception):
            raise self.job
        return dict(self.job)

    def _serve(self, method: str, *, local: bool = False) -> None:
        """``local``: libvirt answers from the handle itself (no request), so the call never fails."""
        if self.conn is not None:
            self.conn.serve(method, self.uuid, domain_call=not local, local=local)


class FakeConnection:
    """A libvirt connection to a scripted host; thread-safe (the snapshot readers share it)."""

    def __init__(self, domains: list[FakeDomain] | None = None) -> None:
        self._lock = threading.Lock()
        self._domains: dict[str, FakeDomain] = {}
        self._hidden: Counter[str] = Counter()
        self._lost = False
        self._bulk_refusal: int | None = None
        self.calls: Counter[tuple[str, str]] = Counter()
        for dom in domains or ():
            self.add(dom)

    # -- the script ----------------------------------------------------------------------------------

    def add(self, dom: FakeDomain) -> FakeDomain:
        dom.conn = self
        with self._lock:
            self._domains[dom.uuid] = dom
        return dom

    def remove(self, uuid: str) -> None:
        """The domain is gone: lookups and calls on its handles raise ``Domain not found``."""
        with self._lock:
            self._domains.pop(uuid, None)

    def hide(self, uuid: str, lookups: int) -> None:
        """The next ``lookups`` lookups of ``uuid`` fail with ``Domain not found`` (then it is found)."""
        with self._lock:
            self._hidden[uuid] = lookups

    def lose(self) -> None:
        """The connection breaks: every call raises ``VIR_ERR_SYSTEM_ERROR``, ``isAlive()`` is False."""
        with self._lock:
            self._lost = True

    def refuse_bulk_stats(self, code: int | None = libvirt.VIR_ERR_NO_SUPPORT) -> None:
        """``domainListGetStats`` fails with ``code`` (by default as on a driver without it); None: it
        answers again."""
        with self._lock:
            self._bulk_refusal = code

    # -- libvirt.virConnect ----------------------------------------------------------------------------

    def listAllDomains(self, flags: int = 0) -> list[FakeDomain]:
        self.serve("listAllDomains", "")
        with self._lock:
            domains = list(self._domains.values())
        if flags & libvirt.VIR_CONNECT_LIST_DOMAINS_TRANSIENT:
            return [d for d in domains if not d.persistent]
        return domains

    def getAllDomainStats(self, stats: int = 0, flags: int = 0) -> list[tuple[FakeDomain, dict[str, Any]]]:
        """Only the STATE group, as the listing asks for it."""
        self.serve("getAllDomainStats", "")
        with self._lock:
            domains = list(self._domains.values())
        return [(d, {"state.state": d.dom_state, "state.reason": d.dom_reason}) for d in domains]

    def domainListGetStats(self, doms: list[FakeDomain], stats: int = 0,
                           flags: int = 0) -> list[tuple[FakeDomain, dict[str, Any]]]:
        """The STATE group of those of ``doms`` that exist and match the persistence filter in ``flags``
        (libvirt skips the others); fails as :meth:`refuse_bulk_stats` says. Counted once
        per call and once per domain asked about."""
        self.serve("domainListGetStats", "")
        for dom in doms:
            self.serve("domainListGetStats", dom.uuid)
        if not doms:
            raise libvirt_error(libvirt.VIR_ERR_INVALID_ARG, "doms array must contain at least one domain")
        with self._lock:
            if self._bulk_refusal is not None:
                raise libvirt_error(self._bulk_refusal, "refused by the script")
            found = [self._domains[d.uuid] for d in doms if d.uuid in self._domains]
        if flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_PERSISTENT:
            found = [d for d in found if d.persistent]
        if flags & libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_TRANSIENT:
            found = [d for d in found if not d.persistent]
        return [(d, {"state.state": d.dom_state, "state.reason": d.dom_reason}) for d in found]

    def lookupByUUIDString(self, uuid: str) -> FakeDomain:
        self.serve("lookupByUUIDString", uuid)
        with self._lock:
            if self._hidden[uuid] > 0:
                self._hidden[uuid] -= 1
                raise _not_found(uuid)
            dom = self._domains.get(uuid)
        if dom is None:
            raise _not_found(uuid)
        return dom

    def isAlive(self) -> int:
        with self._lock:
            return int(not self._lost)

    def serve(self, method: str, uuid: str, *, domain_call: bool = False, local: bool = False) -> None:
        """Count a call and fail it as the script says (never a ``local`` one)."""
        with self._lock:
            self.calls[(method, uuid)] += 1
            lost = self._lost and not local
            gone = domain_call and uuid not in self._domains
        if lost:
            raise libvirt_error(libvirt.VIR_ERR_SYSTEM_ERROR, "Cannot recv data: Connection reset by peer")
        if gone:
            raise _not_found(uuid)

    def count(self, method: str, uuid: str = "") -> int:
        with self._lock:
            return self.calls[(method, uuid)]


class FakeSession:
    """The agent's view of the libvirt edge (``LibvirtSession``): the current connection, or none."""

    def __init__(self, conn: FakeConnection | None = None) -> None:
        self._conn = conn
        self.marked_lost = 0

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connection(self) -> FakeConnection:
        conn = self._conn
        if conn is None:
            raise ConnectionLost("not connected (fake)")
        return conn

    def mark_lost(self) -> None:
        self.marked_lost += 1
        self._conn = None

    def reconnect(self, conn: FakeConnection) -> None:
        self._conn = conn


def _not_found(uuid: str) -> libvirt.libvirtError:
    return libvirt_error(libvirt.VIR_ERR_NO_DOMAIN, f"Domain not found: no domain with matching uuid '{uuid}'")

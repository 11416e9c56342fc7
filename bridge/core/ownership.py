"""Per-host ownership state: which domain UUIDs this host may publish for, and the roles it remembers.

The rules themselves (what each event and each listed state means) are
:mod:`bridge.core.ownership_rules`; this module keeps their state per UUID, fed from the pipeline
thread in arrival order, and what a restart must remember.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from bridge.core.ownership_rules import (
    FIRST_TYPES,
    ListedJob,
    Role,
    Verdict,
    claim_contradicted,
    event_kind,
    listed_role,
    transition,
)
from bridge.records import DomainEvent

__all__ = ["ListedJob", "Ownership", "Role", "Verdict", "claim_contradicted"]


class Ownership:
    """Per-host ownership state of domain UUIDs (canonical lower-case strings). Not thread-safe."""

    def __init__(self, remembered: Mapping[str, str] | None = None) -> None:
        """Start from what :meth:`remembered` returned before a restart (empty on first start)."""
        self._roles: dict[str, Role] = {}
        for uuid, value in (remembered or {}).items():
            try:
                self._roles[uuid] = Role(value)
            except ValueError:
                self._roles[uuid] = Role.HANDED_OFF  # unreadable role: silence is the safe reading
        self._known: set[str] | None = None  # listed last time, or named by an event since; None: no listing yet
        # Known before the latest listing but absent from it, and that listing's time (µs, agent clock):
        # events received before it for these UUIDs were queued, not late.
        self._absent_since: set[str] = set()
        self._listed_at: int | None = None
        self._dropped: dict[Verdict, int] = {v: 0 for v in Verdict if v is not Verdict.PUBLISH}
        self._generation = 0
        self._yielded: list[str] = []

    def on_event(self, uuid: str, event: DomainEvent) -> Verdict:
        """Decide one event; call for every event, in arrival order."""
        if self._known is not None and uuid not in self._known:
            queued = (uuid in self._absent_since and self._listed_at is not None
                      and event.received_at < self._listed_at)
            if not queued and (event.id != "LIFECYCLE" or event.type not in FIRST_TYPES):
                self._dropped[Verdict.DROP_STALE] += 1
                return Verdict.DROP_STALE
        had = self._holds(uuid)
        if self._known is not None:
            self._known.add(uuid)
        role, verdict = transition(self._roles.get(uuid), event_kind(event))
        self._set(uuid, role)
        if had and not self.owns(uuid):
            self._yielded.append(uuid)
        if verdict is not Verdict.PUBLISH:
            self._dropped[verdict] += 1
        return verdict

    def on_listed(
        self, uuid: str, state: str, reason: str, active: bool, *, job: ListedJob = ListedJob.NONE
    ) -> bool:
        """Learn from one domain of a listing; True if this host owns it (RESYNC record, inventory).

        Call right after reading it, before feeding events received after the read: the listed
        state must be at least as new as every event already fed. ``job`` is the domain's migration
        job as read with the state; it only matters for ``PAUSED/MIGRATION`` and
        ``PAUSED/STARTING_UP`` (see :mod:`bridge.core.ownership_rules`), and ``NONE``, the default,
        means libvirt shows no migration for the domain.
        """
        had = self._holds(uuid)
        role = listed_role(self._roles.get(uuid), state, reason, active, job)
        self._set(uuid, role)
        if self._known is not None:
            self._known.add(uuid)
        owned = role is None or role is Role.POSTCOPY_IN
        if had and not owned:
            self._yielded.append(uuid)
        return owned

    def revoke_claim(self, uuid: str) -> None:
        """A claim whose snapshot, read after it, shows the domain not running here (and no stop among
        the events explains it): the incoming migration failed between the claim and the read (a
        post-copy destination whose QEMU died). The host yields, silent, as for a failed incoming
        migration; the source takes the domain back. See :func:`claim_contradicted`."""
        had = self._holds(uuid)
        self._set(uuid, Role.INCOMING)
        if had:
            self._yielded.append(uuid)  # its claim may have been published already (post-copy)

    def forget_absent(self, present: Collection[str], listed_at: int | None = None) -> None:
        """After a full listing (and its :meth:`on_listed` calls): ``present`` is every listed UUID.

        ``listed_at``: when the listing was read, on the clock of ``DomainEvent.received_at``.
        """
        previous = self._known
        self._known = set(present)
        self._absent_since = set() if previous is None or listed_at is None else previous - self._known
        self._listed_at = listed_at
        for uuid in [u for u in self._roles if u not in self._known]:
            self._set(uuid, None)

    def owns(self, uuid: str) -> bool:
        """Whether this host would publish for ``uuid`` now (True for a UUID it knows nothing about)."""
        role = self._roles.get(uuid)
        return role is None or role is Role.POSTCOPY_IN

    def provisional(self, uuid: str) -> bool:
        """Owned only as a post-copy destination (``POSTCOPY_IN``): a read showing the domain not
        running here contradicts it as it would a claim (:func:`claim_contradicted`)."""
        return self._roles.get(uuid) is Role.POSTCOPY_IN

    def holds(self, uuid: str) -> bool:
        """Owned *and* on this host: listed by the latest full listing or named by an event since
        (False before the first listing). Only such a domain is this host's to publish again when
        another host asks (:class:`bridge.signals.ReassertSignal`)."""
        return self._known is not None and uuid in self._known and self.owns(uuid)

    def take_yielded(self) -> list[str]:
        """UUIDs this host held and stopped owning since the last call, in order (each once per
        yield): a hand-off, an incoming migration of a domain a listing had taken for ours, a claim
        given back. Its records of them may still land after the new owner's; the caller asks the
        owner to publish again once its own are acknowledged."""
        out, self._yielded = self._yielded, []
        return out

    def remembered(self) -> dict[str, str]:
        """What to persist: role value by UUID for every UUID not plainly owned."""
        return {uuid: role.value for uuid, role in self._roles.items()}

    @property
    def generation(self) -> int:
        """Bumped whenever :meth:`remembered` changes; persist when it differs from the last write."""
        return self._generation

    @property
    def dropped(self) -> Mapping[Verdict, int]:
        """Dropped events so far, by reason."""
        return dict(self._dropped)

    def _holds(self, uuid: str) -> bool:
        # Before the first listing every UUID an event names counts: a restarted agent's predecessor
        # may have published it.
        return (self._known is None or uuid in self._known) and self.owns(uuid)

    def _set(self, uuid: str, role: Role | None) -> None:
        if self._roles.get(uuid) is role:
            return
        if role is None:
            del self._roles[uuid]
        else:
            self._roles[uuid] = role
        self._generation += 1

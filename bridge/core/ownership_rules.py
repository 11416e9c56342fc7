"""The fleet ownership rules of DESIGN.md, as pure functions: which host may publish for a domain UUID.

The per-host state that applies them is :class:`bridge.core.ownership.Ownership`, one per agent, fed
from the single pipeline thread: every event in arrival order (:meth:`Ownership.on_event`), every
domain of a full listing (:meth:`Ownership.on_listed`) followed by :meth:`Ownership.forget_absent`.
It answers PUBLISH or DROP_*; the caller counts and logs drops.

A UUID this host knows nothing about is owned: a plain local domain. Only migration moves ownership
away, and running here brings it back. Only these roles are stored (everything else is owned):

- ``HANDED_OFF`` -- a source after the switch-over, or a host keeping a copy of a domain that runs
  elsewhere. Silent: no records, no DELETED, no tombstone, whatever happens to the copy.
- ``INCOMING`` -- a destination before its claim. Silent.
- ``POSTCOPY_IN`` -- a destination that claimed with ``RESUMED/POSTCOPY`` while pages still come from
  the source. Publishes, but yields (goes silent) if the post-copy phase fails.

Events (lifecycle ``TYPE/DETAIL``; anything not listed keeps the role):

- Running here means owned here. ``STARTED/*`` but ``STARTED/MIGRATED`` (booted, restored from a save
  image or a managed save, reverted to a snapshot, woken up) and ``RESUMED/*`` other than the
  migration details below (``UNPAUSED``, ``FROM_SNAPSHOT``, ...; a restore of a running image gives
  ``STARTED/RESTORED`` then ``RESUMED/FROM_SNAPSHOT``): the domain runs on this host, so this host
  owns it, published, whatever the role was -- a handed-off copy started again, a domain an earlier
  listing took for incoming. ``RESUMED/UNPAUSED`` is also how a source came back from a live
  migration aborted during the switch-over, seen once here: ``SUSPENDED/MIGRATED``, then
  ``RESUMED/UNPAUSED`` 11 ms later on the source, ``STOPPED/FAILED`` on the destination.
- ``RESUMED/MIGRATED``: the destination's claim, or a source taking back a migration that failed after
  the switch-over; published either way. ``RESUMED/POSTCOPY``: the destination's post-copy claim,
  published, ``POSTCOPY_IN``.
- ``RESUMED/POSTCOPY_FAILED`` is the one ``RESUMED`` that does not claim: it is a failure notice on a
  destination whose post-copy broke (libvirt >= 8.5 keeps it running, waiting for pages), and the
  source takes the domain back with ``SUSPENDED/POSTCOPY_FAILED``. The destination yields and becomes
  ``INCOMING`` (a handed-off UUID stays ``HANDED_OFF``): one owner at a time wins over the literal
  "RESUMED/*".
- ``SUSPENDED/MIGRATED``, ``SUSPENDED/POSTCOPY``, ``STOPPED/MIGRATED``: hand-off, inclusive (the event
  itself is dropped). ``STOPPED/MIGRATED`` only ever happens on a source that already switched over,
  so it hands off too: that covers an agent that missed the switch-over.
- ``STARTED/MIGRATED``: incoming (QEMU started paused with ``-incoming``), silent.
- ``SUSPENDED/POSTCOPY_FAILED`` on a handed-off (or owned) UUID: the source takes the domain back,
  published. The same event on a post-copy destination (libvirt emits it there when the domain was
  already paused) means a destination whose post-copy failed: it yields and becomes ``INCOMING``.
- ``STOPPED/*`` (not MIGRATED) while ``INCOMING``/``POSTCOPY_IN``: a failed incoming migration, dropped.
  The UUID becomes ``HANDED_OFF`` rather than forgotten: if a definition lingers (PERSIST_DEST, or an
  older copy of ours), an admin's later undefine must not tombstone the real owner's key.
  :meth:`Ownership.forget_absent` drops it once a listing shows no copy.

Restart and resync (:meth:`Ownership.on_listed`). The listed state and reason decide, with the
domain's migration job (:class:`ListedJob`) where the reason alone is ambiguous, because they are read
after every event already fed; an agent that restarts mid-migration, or missed events while
disconnected, has only the listing and the remembered roles. Per listed (state, reason):

- ``PAUSED/MIGRATION`` decides by the job. libvirt gives this state and reason to an incoming domain
  on the destination (QEMU started paused for ``-incoming``), to the source after the switch-over
  (or for the whole of a non-live migration), and -- no migration at all -- to a domain restored from
  a save image or a managed save while paused, which keeps it across libvirtd restarts until resumed
  (libvirt 9.0, QEMU 7.2; ``tests/fixtures/event_orders``). ``INCOMING`` job (libvirt 9 refuses job
  statistics for it, "available only on the source host"): ``INCOMING``, silent. ``OUTGOING`` job
  (job statistics with operation MIGRATION_OUT): ``HANDED_OFF``, silent. ``NONE`` (no job, or a job
  of another kind): not a migration, owned, whatever the remembered role. ``UNKNOWN`` (the job could
  not be read): silence is preferred when in doubt, as ``HANDED_OFF`` unless already ``INCOMING``.
  Every continuation of a silent listing resolves right on either side: ``RESUMED/MIGRATED`` claims
  (destination done, or source resumed after failure), ``RESUMED/POSTCOPY`` claims, any other
  ``RESUMED`` claims (running here), ``STOPPED/MIGRATED`` and ``STOPPED/FAILED`` keep it silent.
- ``PAUSED/STARTING_UP`` decides by the job too. Every QEMU domain reads that way while its process
  starts: an incoming migration's destination from the moment the domain is listed there until its
  ``STARTED/MIGRATED`` (0.25 to 0.4 s recorded; job statistics refused at once, as for ``INCOMING``
  above), and a local start (libvirt makes its job statistics, and the bulk listing, wait for the
  start to end, about 0.3 s, so the listing reads the outcome instead). ``INCOMING``: ``INCOMING``,
  silent. ``UNKNOWN`` (the job read failed, most often because the domain just vanished): silent as
  for ``PAUSED/MIGRATION``; owning it would let an aborted incoming migration's ``STOPPED/FAILED``
  publish DELETED and a tombstone for a domain that runs on its source, while a local start that
  was read this way is claimed by the ``STARTED/*`` event that ends every start. Any other job: the
  rule for any other active domain below. Seen on the fleet soak before this rule: a destination's
  agent restarted just before a migration listed the incoming domain as its own and published it,
  200 ms before the source's switch-over.
- ``PAUSED/POSTCOPY`` (source in post-copy), ``SHUTOFF/MIGRATED`` (copy left behind): ``HANDED_OFF``.
- ``RUNNING/POSTCOPY_FAILED`` (destination of a failed post-copy): silent, ``INCOMING``.
- ``RUNNING/POSTCOPY``: ``POSTCOPY_IN``, owned. ``RUNNING/MIGRATED`` (incoming completed),
  ``RUNNING/MIGRATION_CANCELED`` (source resumed after a failed migration), ``PAUSED/POSTCOPY_FAILED``
  (source of a failed post-copy): owned.
- Any other active domain: owned if it was owned or ``HANDED_OFF`` (our copy was started while we were
  not listening, as a missed ``STARTED`` would have said); an ``INCOMING`` one stays silent (a paused
  destination of a failed post-copy keeps its old pause reason).
- Any other inactive domain: owned only if it was owned; any remembered role becomes ``HANDED_OFF``.

The job is evidence only for ``PAUSED/MIGRATION`` and ``PAUSED/STARTING_UP``: every other listed
state either says by its reason which side it is on, or is decided by the remembered role as above.

Known limits: an agent down for the whole life of a failed incoming migration whose definition
lingers (PERSIST_DEST) has no memory of it and sees a plain shut-off domain, which it owns. A listing
that reads a persistent domain's definition on the destination just as a new incoming migration for
it is being prepared, before its QEMU process exists (PERSIST_DEST of a domain defined there before),
owns it until the ``STARTED/MIGRATED`` that follows makes it ``INCOMING``.

Stale events. libvirt can deliver an event after a listing that was read later than the event was
emitted (libvirtd queues events; a reply can overtake them). After a full listing, an event for a UUID
the listing did not show and no event has named since, other than ``DEFINED``/``STARTED``/``RESUMED``
(the ways a new domain first shows up), predates the listing: it is dropped as ``DROP_STALE``. The
listing already said the domain is gone, and the resync inventory repairs its key. Without this rule
a late ``STOPPED/FAILED`` of a failed incoming migration, or a source's late ``JOB_COMPLETED``, would
turn into a DELETED record and a tombstone for a domain another host owns. Until the first full
listing no event is stale. From the second listing on, the agent passes the listing's time, and an
event received *before* it for a UUID known before it is not stale: it was queued behind a record in
flight while the domain vanished (a transient domain's ``STOPPED``), and this host still owns it, so
it must still be published. Only the first listing of an agent's life, with no memory behind it,
judges such events stale.

Memory. :meth:`Ownership.remembered` is the role of every non-owned UUID; the agent persists it in its
state directory whenever :attr:`Ownership.generation` changes and passes it back at construction.
A role is dropped when the domain becomes owned, or when a full listing lacks the UUID: no copy is left
on this host, so nothing to stay silent about, and late events for it are stale. Roles and the set of
known UUIDs are both bounded by the domains present at the last listing plus those named by events
since.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from bridge.records import DomainEvent


class Verdict(enum.Enum):
    """What to do with one event."""

    PUBLISH = "PUBLISH"
    DROP_HANDED_OFF = "DROP_HANDED_OFF"
    """This host handed the domain off, or keeps a copy of a domain owned elsewhere."""
    DROP_INCOMING = "DROP_INCOMING"
    """This host is (or was, for a failed migration) a destination that has not claimed the domain."""
    DROP_STALE = "DROP_STALE"
    """An event older than the last listing, for a domain that listing did not show."""


class Role(enum.StrEnum):
    """A non-owned (or provisionally owned) UUID's role on this host. Values are persisted."""

    HANDED_OFF = "handed_off"
    INCOMING = "incoming"
    POSTCOPY_IN = "postcopy_in"


class ListedJob(enum.Enum):
    """What a listing read of a domain's job says about migration (libvirt 9 ``virDomainGetJobStats``)."""

    NONE = "NONE"
    """No job, or a job that is not a migration (save, dump, snapshot, ...)."""
    INCOMING = "INCOMING"
    """An incoming migration: libvirt refuses job statistics for it (``VIR_ERR_OPERATION_UNSUPPORTED``)."""
    OUTGOING = "OUTGOING"
    """An outgoing migration: job statistics with operation ``VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT``."""
    UNKNOWN = "UNKNOWN"
    """The job could not be read."""


class _Kind(enum.Enum):
    HAND_OFF = enum.auto()
    INCOMING_START = enum.auto()
    CLAIM = enum.auto()
    CLAIM_POSTCOPY = enum.auto()
    SUSPENDED_POSTCOPY_FAILED = enum.auto()
    RESUMED_POSTCOPY_FAILED = enum.auto()
    LOCAL_START = enum.auto()
    LOCAL_RESUME = enum.auto()
    STOP = enum.auto()
    OTHER = enum.auto()


_LIFECYCLE_KINDS = {
    ("SUSPENDED", "MIGRATED"): _Kind.HAND_OFF,
    ("SUSPENDED", "POSTCOPY"): _Kind.HAND_OFF,
    ("STOPPED", "MIGRATED"): _Kind.HAND_OFF,
    ("STARTED", "MIGRATED"): _Kind.INCOMING_START,
    ("RESUMED", "MIGRATED"): _Kind.CLAIM,
    ("RESUMED", "POSTCOPY"): _Kind.CLAIM_POSTCOPY,
    ("SUSPENDED", "POSTCOPY_FAILED"): _Kind.SUSPENDED_POSTCOPY_FAILED,
    ("RESUMED", "POSTCOPY_FAILED"): _Kind.RESUMED_POSTCOPY_FAILED,
}


def event_kind(event: DomainEvent) -> _Kind:
    if event.id != "LIFECYCLE" or event.type is None:
        return _Kind.OTHER
    kind = _LIFECYCLE_KINDS.get((event.type, event.detail or ""))
    if kind is not None:
        return kind
    if event.type == "STARTED":
        return _Kind.LOCAL_START
    if event.type == "RESUMED":
        return _Kind.LOCAL_RESUME
    if event.type == "STOPPED":
        return _Kind.STOP
    return _Kind.OTHER


# Lifecycle types a domain new to this host can first appear with ("Resumed before Started" happens).
FIRST_TYPES = frozenset({"DEFINED", "STARTED", "RESUMED"})


def _silent_verdict(role: Role | None) -> Verdict:
    return Verdict.DROP_HANDED_OFF if role is Role.HANDED_OFF else Verdict.DROP_INCOMING


def transition(role: Role | None, kind: _Kind) -> tuple[Role | None, Verdict]:
    """(new role, verdict) for one event; ``None`` is plain ownership."""
    owner_like = role is None or role is Role.POSTCOPY_IN
    match kind:
        case _Kind.CLAIM:
            return None, Verdict.PUBLISH
        case _Kind.CLAIM_POSTCOPY:
            return Role.POSTCOPY_IN, Verdict.PUBLISH
        case _Kind.LOCAL_START | _Kind.LOCAL_RESUME:
            return None, Verdict.PUBLISH  # running here means owned here
        case _Kind.HAND_OFF:
            return Role.HANDED_OFF, Verdict.DROP_HANDED_OFF
        case _Kind.INCOMING_START:
            return Role.INCOMING, Verdict.DROP_INCOMING
        case _Kind.SUSPENDED_POSTCOPY_FAILED:
            if role is None or role is Role.HANDED_OFF:
                return None, Verdict.PUBLISH  # the source takes the domain back
            return Role.INCOMING, Verdict.DROP_INCOMING  # a destination that was already paused
        case _Kind.RESUMED_POSTCOPY_FAILED:
            if role is Role.HANDED_OFF:
                return role, Verdict.DROP_HANDED_OFF
            return Role.INCOMING, Verdict.DROP_INCOMING
        case _Kind.STOP:
            if role is None:
                return None, Verdict.PUBLISH
            if role is Role.HANDED_OFF:
                return role, Verdict.DROP_HANDED_OFF
            return Role.HANDED_OFF, Verdict.DROP_INCOMING  # failed incoming; see module doc
        case _Kind.OTHER:
            if owner_like:
                return role, Verdict.PUBLISH
            return role, _silent_verdict(role)


# Listed (state, reason) pairs that decide by themselves, whatever the remembered role.
_LISTED_OWNED = {("RUNNING", "MIGRATED"), ("RUNNING", "MIGRATION_CANCELED"), ("PAUSED", "POSTCOPY_FAILED")}
_LISTED_HANDED_OFF = {("PAUSED", "POSTCOPY"), ("SHUTOFF", "MIGRATED")}
# Listed pairs that the domain's migration job decides (the agent reads the job for exactly these).
_PAUSED_MIGRATION = ("PAUSED", "MIGRATION")
_JOB_DECIDES = {_PAUSED_MIGRATION, ("PAUSED", "STARTING_UP")}


def listed_role(role: Role | None, state: str, reason: str, active: bool, job: ListedJob) -> Role | None:
    key = (state, reason)
    if key in _LISTED_OWNED:
        return None
    if key == ("RUNNING", "POSTCOPY"):
        return Role.POSTCOPY_IN
    if key in _LISTED_HANDED_OFF:
        return Role.HANDED_OFF
    if key in _JOB_DECIDES:
        match job:
            case ListedJob.INCOMING:
                return Role.INCOMING
            case ListedJob.UNKNOWN:
                return Role.INCOMING if role is Role.INCOMING else Role.HANDED_OFF
            case ListedJob.OUTGOING if key == _PAUSED_MIGRATION:
                return Role.HANDED_OFF
            case ListedJob.NONE if key == _PAUSED_MIGRATION:
                return None  # no migration: e.g. restored from a save image while paused
        # PAUSED/STARTING_UP with no migration job: a local start, as any other active domain below.
    if key == ("RUNNING", "POSTCOPY_FAILED"):
        return Role.HANDED_OFF if role is Role.HANDED_OFF else Role.INCOMING
    if active:
        return None if role is Role.HANDED_OFF else role
    return None if role is None else Role.HANDED_OFF


def claim_contradicted(events: Iterable[DomainEvent], active: bool) -> bool:
    """True if a batch that claimed a domain (its first published event took it over) must not be
    published after all: its snapshot, read after the events, shows the domain inactive, and no stop
    among the events says why. The claim said "running here"; the read says it is not, so the migration
    failed in between (seen on a post-copy destination whose QEMU was killed right after
    ``RESUMED/POSTCOPY``: its record read ``SHUTOFF/CRASHED`` and outranked the source's take-back).
    A claim followed by its own stop (started, then destroyed) is the host's word and is published."""
    return not active and not any(e.id == "LIFECYCLE" and e.type == "STOPPED" for e in events)

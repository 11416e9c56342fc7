"""libvirt's enum values as the stable names the records carry.

Explicit tables rather than introspection of ``libvirt`` constants: prefixes collide there
(``VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN`` is a flag, not a shutdown reason). A unit test checks every
entry against the binding's constants. Unknown values from a newer libvirt become ``UNKNOWN_<n>``.
"""

from __future__ import annotations

STATES: tuple[str, ...] = (
    "NOSTATE", "RUNNING", "BLOCKED", "PAUSED", "SHUTDOWN", "SHUTOFF", "CRASHED", "PMSUSPENDED",
)

REASONS: dict[str, tuple[str, ...]] = {
    "NOSTATE": ("UNKNOWN",),
    "RUNNING": (
        "UNKNOWN", "BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "UNPAUSED", "MIGRATION_CANCELED",
        "SAVE_CANCELED", "WAKEUP", "CRASHED", "POSTCOPY", "POSTCOPY_FAILED",
    ),
    "BLOCKED": ("UNKNOWN",),
    "PAUSED": (
        "UNKNOWN", "USER", "MIGRATION", "SAVE", "DUMP", "IOERROR", "WATCHDOG", "FROM_SNAPSHOT",
        "SHUTTING_DOWN", "SNAPSHOT", "CRASHED", "STARTING_UP", "POSTCOPY", "POSTCOPY_FAILED", "API_ERROR",
    ),
    "SHUTDOWN": ("UNKNOWN", "USER"),
    "SHUTOFF": (
        "UNKNOWN", "SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED", "FROM_SNAPSHOT",
        "DAEMON",
    ),
    "CRASHED": ("UNKNOWN", "PANICKED"),
    "PMSUSPENDED": ("UNKNOWN",),
}

LIFECYCLE_TYPES: tuple[str, ...] = (
    "DEFINED", "UNDEFINED", "STARTED", "SUSPENDED", "RESUMED", "STOPPED", "SHUTDOWN", "PMSUSPENDED",
    "CRASHED",
)

LIFECYCLE_DETAILS: dict[str, tuple[str, ...]] = {
    "DEFINED": ("ADDED", "UPDATED", "RENAMED", "FROM_SNAPSHOT"),
    "UNDEFINED": ("REMOVED", "RENAMED"),
    "STARTED": ("BOOTED", "MIGRATED", "RESTORED", "FROM_SNAPSHOT", "WAKEUP", "RECREATED"),
    "SUSPENDED": (
        "PAUSED", "MIGRATED", "IOERROR", "WATCHDOG", "RESTORED", "FROM_SNAPSHOT", "API_ERROR", "POSTCOPY",
        "POSTCOPY_FAILED",
    ),
    "RESUMED": ("UNPAUSED", "MIGRATED", "FROM_SNAPSHOT", "POSTCOPY", "POSTCOPY_FAILED"),
    "STOPPED": ("SHUTDOWN", "DESTROYED", "CRASHED", "MIGRATED", "SAVED", "FAILED", "FROM_SNAPSHOT"),
    "SHUTDOWN": ("FINISHED", "GUEST", "HOST"),
    "PMSUSPENDED": ("MEMORY", "DISK"),
    "CRASHED": ("PANICKED", "CRASHLOADED"),
}


def _pick(table: tuple[str, ...], value: int) -> str:
    return table[value] if 0 <= value < len(table) else f"UNKNOWN_{value}"


def state_name(state: int) -> str:
    """``virDomainState`` value → name (``RUNNING``)."""
    return _pick(STATES, state)


def reason_name(state: int, reason: int) -> str:
    """Reason value for a state → name (``BOOTED`` for RUNNING)."""
    return _pick(REASONS.get(state_name(state), ()), reason)


def lifecycle_names(event: int, detail: int) -> tuple[str, str]:
    """Lifecycle event type and detail values → names (``STARTED``, ``BOOTED``)."""
    type_name = _pick(LIFECYCLE_TYPES, event)
    return type_name, _pick(LIFECYCLE_DETAILS.get(type_name, ()), detail)

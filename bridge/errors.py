"""Exceptions that cross module boundaries."""


class BridgeError(Exception):
    """Base class of the bridge's own errors."""


class UserError(BridgeError):
    """A problem the user can fix (bad config, unreachable endpoint): exit status 2, no traceback."""


class DecodeError(BridgeError):
    """Bytes on a topic that are not a record this bridge can read."""

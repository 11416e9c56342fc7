"""Keeping secrets out of logs, reprs, status files and error messages: one rule for the project.

A setting is secret when its key names a password, secret, token, credential or user info
(``sasl.password``, ``ssl.key.password``, ``ssl.keystore.password``, ``sasl.oauthbearer.client.secret``,
``basic.auth.user.info``, ``bearer.auth.token``…), a key (``ssl.key.pem``, ``ssl_key``; but a
``*.location`` is a path and is shown) or a whole credential configuration (``sasl.jaas.config``,
``sasl.oauthbearer.config``). ``config show`` masks by the same words.
Its value is shown as ``***``; text that might quote it (a client library's error) is passed through
:func:`redact` with the settings in force.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

MASK = "***"

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]*@")
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "user.info", "jaas", "private")
_SECRET_KEYS = frozenset({"sasl.oauthbearer.config", "ssl.engine.callback_data"})


def is_secret_key(key: str) -> bool:
    """True for a setting whose value must never be shown."""
    lowered = key.lower()
    if lowered in _SECRET_KEYS or any(word in lowered for word in _SECRET_WORDS):
        return True
    return "key" in lowered and not lowered.endswith(".location")


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every secret value replaced by ``***`` (for reprs and logs)."""
    return {key: MASK if is_secret_key(str(key)) and value not in (None, "") else value
            for key, value in config.items()}


def secret_values(config: Mapping[str, Any]) -> set[str]:
    """Every string that would give a secret of ``config`` away: each secret value, the password part of
    a ``user:password`` value, and their URL-encoded forms."""
    out: set[str] = set()
    for key, value in config.items():
        if not isinstance(value, str) or not value or not is_secret_key(str(key)):
            continue
        out.add(value)
        if str(key).lower().endswith("user.info") and ":" in value:
            password = value.split(":", 1)[1]
            if password:
                out.add(password)
    out |= {quote(s, safe="") for s in out}
    return out


def redact(text: str, config: Mapping[str, Any]) -> str:
    """``text`` with every secret value of ``config`` (see :func:`secret_values`) masked as ``***``."""
    for secret in sorted(secret_values(config), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def masked_url(url: str | None) -> str | None:
    """``url`` (or a comma-separated list) with the password of any ``user:password@`` masked."""
    return None if url is None else _URL_PASSWORD.sub(rf"\g<1>{MASK}@", url)

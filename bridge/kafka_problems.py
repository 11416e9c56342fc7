"""Kafka client errors that mean a security setting is wrong, told as one line naming the setting.

librdkafka reports a refused SASL login (``_AUTHENTICATION``) or a failed TLS handshake (``_SSL``,
or ``_TRANSPORT`` when a TLS client meets a plaintext listener) through the client's ``error_cb``
and keeps retrying; a blocking call such as ``list_topics`` just times out with "transport failure".
:class:`ProblemWatcher` is that ``error_cb``: it keeps the latest such problem so start-up code can
stop at once (a *definite* problem: retrying the same settings cannot help) or explain a timeout.
Every message has the secrets of the client's settings masked (:func:`bridge.redaction.redact`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from bridge.redaction import redact

KAFKA_CONFIG_PLACES = "--kafka-config (or BRIDGE_KAFKA_CONFIG, or the config file's [kafka] table)"

# "sasl_ssl://127.0.0.1:9093/bootstrap: " and " (after 10ms in state SSL_HANDSHAKE, 3 identical error(s) ...)"
_BROKER_PREFIX = re.compile(r"^(?:[a-z_]+://)?(?P<addr>[^\s/]+)(?:/[^\s:]+)?: ")
_AFTER_SUFFIX = re.compile(r"\s*\(after \d+ms in state [A-Z_]+[^)]*\)\s*$")


@dataclass(frozen=True)
class KafkaProblem:
    """What is wrong, as one line naming the setting to fix."""

    message: str
    definite: bool
    """A setting is wrong for sure (credentials refused, certificate not trusted): retrying cannot help."""


def diagnose(err: KafkaError, config: Mapping[str, Any]) -> KafkaProblem | None:
    """The security problem ``err`` reveals, or None for any other error (e.g. a broker down)."""
    code = err.code()
    text = str(err.str())
    if code not in (KafkaError._AUTHENTICATION, KafkaError._SSL) and not (
        code == KafkaError._TRANSPORT and "SSL handshake failed" in text
    ):
        return None
    match = _BROKER_PREFIX.match(text)
    where = f"Kafka at {match.group('addr')}" if match else f"Kafka at {config.get('bootstrap.servers', '?')}"
    detail = _AFTER_SUFFIX.sub("", text[match.end():] if match else text)
    lowered = detail.lower()
    if code == KafkaError._AUTHENTICATION:
        mechanism = config.get("sasl.mechanism") or config.get("sasl.mechanisms") or "GSSAPI"
        if "unsupported sasl mechanism" in lowered:
            message = (f"{where} does not accept sasl.mechanism={mechanism} ({detail}): "
                       f"fix sasl.mechanism in {KAFKA_CONFIG_PLACES}")
        elif "invalid credentials" in lowered or "authentication failed" in lowered:
            user = config.get("sasl.username")
            who = f" of user {user!r}" if user else ""
            message = (f"{where} refused the SASL credentials{who} ({mechanism}): check sasl.username and "
                       f"sasl.password in {KAFKA_CONFIG_PLACES}")
        else:
            message = (f"SASL authentication with {where} failed ({detail}): check the sasl.* settings in "
                       f"{KAFKA_CONFIG_PLACES}")
        return KafkaProblem(redact(message, config), definite=True)
    if "certificate verify failed" in lowered or "certificate could not be verified" in lowered:
        ca = config.get("ssl.ca.location")
        now = f" (now {ca})" if ca else ""
        reason = detail.split(": broker certificate could not be verified", 1)[0]
        message = (f"the TLS certificate of {where} is not trusted ({reason}): set ssl.ca.location{now} to the "
                   f"CA certificate that signed the broker's, in {KAFKA_CONFIG_PLACES}")
        return KafkaProblem(redact(message, config), definite=True)
    if "plaintext broker listener" in lowered:
        protocol = config.get("security.protocol", "plaintext")
        message = (f"{where} does not speak TLS ({detail}): check that --bootstrap-servers names the TLS "
                   f"listener, and security.protocol (now {protocol}) in {KAFKA_CONFIG_PLACES}")
        return KafkaProblem(redact(message, config), definite=False)
    message = (f"TLS handshake with {where} failed ({detail}): check security.protocol and the ssl.* "
               f"settings in {KAFKA_CONFIG_PLACES}")
    return KafkaProblem(redact(message, config), definite=code == KafkaError._SSL)


class ProblemWatcher:
    """An ``error_cb`` that remembers the latest security problem, then calls ``also`` (if given)."""

    def __init__(self, config: Mapping[str, Any], also: Callable[[KafkaError], None] | None = None) -> None:
        self._config = dict(config)
        self._also = also
        self._lock = threading.Lock()
        self._problem: KafkaProblem | None = None

    def __call__(self, err: KafkaError) -> None:
        problem = diagnose(err, self._config)
        if problem is not None:
            with self._lock:
                self._problem = problem
        if self._also is not None:
            self._also(err)

    @property
    def problem(self) -> KafkaProblem | None:
        """The latest security problem seen (None if none)."""
        with self._lock:
            return self._problem

    def clear(self) -> None:
        with self._lock:
            self._problem = None


def error_text(exc: BaseException | KafkaError, config: Mapping[str, Any]) -> str:
    """A Kafka exception's (or error's) message with the secrets of ``config`` masked."""
    arg: Any = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    text = arg.str() if isinstance(arg, KafkaError) else str(arg)
    return redact(str(text), config)

"""A KafkaCluster with an extra SASL_SSL listener: TLS with a test CA, and SCRAM-SHA-512 users.

The PLAINTEXT listener stays (controller, inter-broker traffic, test set-up); clients under test
connect to :attr:`SecuredKafkaCluster.secure_bootstrap_servers` with :meth:`SecuredKafkaCluster.client_config`.
Certificates are made at start with ``openssl`` (a CA, a broker certificate for 127.0.0.1 with
``subjectAltName=IP:127.0.0.1``, and a second CA that signed nothing, for "untrusted" tests); the
broker reads its key and chain as a PEM keystore (``ssl.keystore.type=PEM``), so no keytool is needed.
SCRAM credentials are created with the admin API over PLAINTEXT (``AlterUserScramCredentials``), and
:meth:`start` returns once every user can authenticate on the SASL_SSL listener.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from devenv._proc import DevEnvError, wait_until
from devenv.kafka import START_TIMEOUT, KafkaCluster, _Node, _PortTaken
from devenv.ports import LOOPBACK, free_ports

SECURE_LISTENER = "SASL_SSL"
MECHANISM = "SCRAM-SHA-512"
DEFAULT_USERS = {"bridge": "bridge-secret-Pw-7f3a9c"}
CERT_DAYS = 2


@dataclass(frozen=True)
class TestPki:
    """PEM files made by :func:`make_test_pki`."""

    ca_cert: Path
    """The CA that signed the broker's certificate: a client's ``ssl.ca.location``."""
    broker_keystore: Path
    """The broker's private key (PKCS#8) followed by its certificate and the CA's."""
    untrusted_ca_cert: Path
    """Another CA, which signed nothing: a client trusting only it must refuse the broker."""


def make_test_pki(directory: Path, host_ip: str = LOOPBACK) -> TestPki:
    """A CA, a broker certificate for ``host_ip`` (SAN IP) signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        result = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise DevEnvError(f"openssl {args[0]} failed: {result.stderr.strip()[-2000:]}")

    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(CERT_DAYS),
                "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=libvirt-kafka-bridge test {name}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (directory / "broker.ext").write_text(
        f"subjectAltName=IP:{host_ip}\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
            "-subj", f"/CN={host_ip}")
    openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", str(CERT_DAYS), "-out", "broker.pem", "-extfile", "broker.ext")
    keystore = directory / "broker-keystore.pem"
    keystore.write_text("".join((directory / f).read_text() for f in ("broker.key", "broker.pem", "ca.pem")))
    return TestPki(directory / "ca.pem", keystore, directory / "other-ca.pem")


class SecuredKafkaCluster(KafkaCluster):
    """:class:`KafkaCluster` plus a ``SASL_SSL`` listener per node (SCRAM-SHA-512 over TLS).

    ``users``: SCRAM-SHA-512 user names and passwords to create (default: ``bridge``).
    """

    def __init__(self, workdir: Path, nodes: int = 1, libs_dir: Path | None = None,
                 users: dict[str, str] | None = None) -> None:
        super().__init__(workdir, nodes=nodes, libs_dir=libs_dir)
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.pki: TestPki | None = None
        self._secure_ports: list[int] = []

    # -- public API -------------------------------------------------------------------------------

    @property
    def secure_bootstrap_servers(self) -> str:
        """Comma-separated ``127.0.0.1:port`` of every node's SASL_SSL listener."""
        self._require_started()
        return ",".join(f"{LOOPBACK}:{port}" for port in self._secure_ports)

    @property
    def ca_location(self) -> Path:
        """The CA certificate clients must trust (``ssl.ca.location``)."""
        if self.pki is None:
            raise DevEnvError("SecuredKafkaCluster is not started")
        return self.pki.ca_cert

    def client_config(self, username: str = "bridge", password: str | None = None,
                      ca_location: Path | None = None) -> dict[str, str]:
        """librdkafka settings for the SASL_SSL listener (``password`` defaults to the user's own)."""
        return {
            "bootstrap.servers": self.secure_bootstrap_servers,
            "security.protocol": SECURE_LISTENER,
            "sasl.mechanism": MECHANISM,
            "sasl.username": username,
            "sasl.password": self.users[username] if password is None else password,
            "ssl.ca.location": str(ca_location or self.ca_location),
        }

    def start(self) -> None:
        self.pki = make_test_pki(self.workdir / "pki")
        super().start()
        try:
            self._add_users()
            self._wait_secure_ready()
        except BaseException:
            self.stop()
            raise

    # -- internals --------------------------------------------------------------------------------

    def _start_once(self) -> None:
        self._secure_ports = free_ports(self.nodes)
        super()._start_once()

    def _properties(self, node: _Node) -> str:
        assert self.pki is not None
        secure_port = self._secure_ports[node.node_id - 1]
        if secure_port in {p for n in self._nodes for p in (n.port, n.controller_port)}:
            raise _PortTaken(f"port {secure_port} was picked twice")
        props: dict[str, str] = {}
        for line in super()._properties(node).splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        secure = f"{SECURE_LISTENER}://{LOOPBACK}:{secure_port}"
        props["listeners"] += f",{secure}"
        props["advertised.listeners"] += f",{secure}"
        props["listener.security.protocol.map"] += f",{SECURE_LISTENER}:{SECURE_LISTENER}"
        prefix = f"listener.name.{SECURE_LISTENER.lower()}."
        props.update({
            "sasl.enabled.mechanisms": MECHANISM,
            f"{prefix}sasl.enabled.mechanisms": MECHANISM,
            f"{prefix}{MECHANISM.lower()}.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.location": str(self.pki.broker_keystore),
            f"{prefix}ssl.client.auth": "none",
        })
        return "".join(f"{k}={v}\n" for k, v in props.items())

    def _add_users(self) -> None:
        if not self.users:
            return
        admin = self._admin(self.bootstrap_servers)
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
        upserts: list[UserScramCredentialAlteration] = [
            UserScramCredentialUpsertion(name, info, password.encode()) for name, password in self.users.items()
        ]
        for name, future in admin.alter_user_scram_credentials(upserts, request_timeout=30).items():
            try:
                future.result(30)
            except KafkaException as exc:
                raise DevEnvError(f"cannot create SCRAM user {name}: {exc}") from None

    def _wait_secure_ready(self) -> None:
        """Wait until every user authenticates on every node's SASL_SSL listener (credentials propagate
        from the controller to each broker's metadata cache)."""
        expected = set(range(1, self.nodes + 1))
        for name in self.users:
            errors: list[str] = []
            conf: dict[str, Any] = {**self.client_config(name), "log_level": 0,
                                    "error_cb": lambda err, errors=errors: errors.append(_err_str(err))}
            for port in self._secure_ports:
                admin = AdminClient({**conf, "bootstrap.servers": f"{LOOPBACK}:{port}"})

                def ready(admin: AdminClient = admin) -> bool:
                    try:
                        return expected <= set(admin.list_topics(timeout=2).brokers)
                    except KafkaException:
                        admin.poll(0)
                        return False

                try:
                    wait_until(ready, timeout=START_TIMEOUT, what=f"SASL_SSL login of {name} on port {port}")
                except DevEnvError as exc:
                    raise DevEnvError(f"{exc}; last client errors: {errors[-3:]}") from None


def _err_str(err: KafkaError) -> str:
    return str(err.str())

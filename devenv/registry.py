"""A real Confluent-compatible Schema Registry on 127.0.0.1: Apicurio Registry, run from Maven Central.

``deploy/dev/bootstrap.sh`` unpacks its Quarkus distribution (a runner jar and ``lib/``) into
``.cache/apicurio-registry``. Storage is an in-memory H2 database, so every start is an empty registry.
Its ``/apis/ccompat/v7`` API speaks Confluent's protocol; :attr:`SchemaRegistry.url` is that API's
base URL, which is what ``--schema-registry-url`` and confluent_kafka's SchemaRegistryClient take.

With ``users``, every ``/apis`` request needs HTTP basic auth with one of them (Quarkus' embedded
user store; no OIDC server involved); health endpoints stay open.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devenv._proc import PDEATHSIG, REPO_ROOT, DevEnvError, Service, log_tail, terminate, wait_until
from devenv.ports import LOOPBACK, free_port

DIST_ENV = "BRIDGE_REGISTRY_DIR"
CCOMPAT_PATH = "/apis/ccompat/v7"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
BIND_ATTEMPTS = 3

JVM_OPTS = (
    "-Xmx384m",
    "-XX:+UseSerialGC",
    # C1 only: the registry serves a handful of requests per test; start-up matters more on 2 cores.
    "-XX:TieredStopAtLevel=1",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)


def default_dist_dir() -> Path:
    """``$BRIDGE_REGISTRY_DIR``, else ``<repo>/.cache/apicurio-registry`` (filled by deploy/dev/bootstrap.sh)."""
    env = os.environ.get(DIST_ENV)
    return Path(env) if env else REPO_ROOT / ".cache" / "apicurio-registry"


class SchemaRegistry(Service):
    """One Apicurio Registry JVM with its config and log in ``workdir``."""

    def __init__(self, workdir: Path, users: Mapping[str, str] | None = None, dist_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.users = dict(users or {})
        self.dist_dir = dist_dir if dist_dir is not None else default_dist_dir()
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public API -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:port``: the server root (health endpoints, Apicurio's own APIs)."""
        if self.port is None:
            raise DevEnvError("SchemaRegistry is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The Confluent-compatible API's base URL, for Schema Registry clients."""
        return self.base_url + CCOMPAT_PATH

    @property
    def log_path(self) -> Path:
        return self.workdir / "registry.log"

    def start(self) -> None:
        """Start the JVM on a free port and wait until the registry is ready."""
        if self._proc is not None:
            raise DevEnvError("SchemaRegistry.start() called twice")
        jar = self._runner_jar()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(BIND_ATTEMPTS):
            try:
                self._start_once(jar)
                return
            except _PortTaken:
                # The port picked as free was taken before the JVM bound it: try a fresh one.
                if attempt == BIND_ATTEMPTS - 1:
                    raise

    def stop(self) -> None:
        """SIGTERM, wait up to 20 s, then SIGKILL; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, STOP_TIMEOUT)

    def get_json(self, path: str, *, user: str | None = None) -> Any:
        """``GET <url><path>`` as ``user`` (default: the first configured user, if any); the parsed JSON."""
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})  # noqa: S310
        name = user if user is not None else next(iter(self.users), None)
        if name is not None:
            token = base64.b64encode(f"{name}:{self.users[name]}".encode()).decode("ascii")
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 (an http URL we built)
            return json.loads(response.read())

    # -- internals --------------------------------------------------------------------------------

    def _runner_jar(self) -> Path:
        jars = sorted(self.dist_dir.glob("apicurio-registry-app-*-runner.jar"))
        if not jars:
            raise DevEnvError(
                f"Apicurio Registry not found in {self.dist_dir}: run deploy/dev/bootstrap.sh "
                f"(or point ${DIST_ENV} at an unpacked apicurio-registry-app distribution)"
            )
        return jars[-1]

    def _properties(self) -> str:
        props: dict[str, str] = {
            "quarkus.http.host": LOOPBACK,
            "quarkus.http.port": str(self.port),
            "apicurio.storage.kind": "sql",
            "apicurio.storage.sql.kind": "h2",
        }
        if self.users:
            props |= {
                "quarkus.http.auth.basic": "true",
                "quarkus.security.users.embedded.enabled": "true",
                "quarkus.security.users.embedded.plain-text": "true",
                "quarkus.http.auth.permission.apis.paths": "/apis/*",
                "quarkus.http.auth.permission.apis.policy": "authenticated",
            }
            props |= {f"quarkus.security.users.embedded.users.{u}": p for u, p in self.users.items()}
        return "".join(f"{k}={_escape(v)}\n" for k, v in props.items())

    def _start_once(self, jar: Path) -> None:
        self.port = free_port()
        # Quarkus reads config/application.properties in its working directory: the users' passwords
        # stay off the command line.
        config = self.workdir / "config"
        config.mkdir(exist_ok=True)
        (config / "application.properties").write_text(self._properties())
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [*PDEATHSIG, "java", *JVM_OPTS, "-jar", str(jar)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        try:
            wait_until(self._ready, timeout=START_TIMEOUT, what=f"schema registry at {self.base_url}",
                       check=self._alive, interval=0.25)
        except BaseException:
            self.stop()
            raise

    def _alive(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is not None:
            tail = log_tail(self.log_path, 200)
            error = _PortTaken if ("in use" in tail or "Address already in use" in tail) else DevEnvError
            self._proc = None
            raise error(f"schema registry exited with {proc.returncode}; tail of {self.log_path}:\n"
                        f"{log_tail(self.log_path)}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


class _PortTaken(DevEnvError):
    """The registry could not bind its port."""


def _escape(value: str) -> str:
    """A value for a Java properties file: backslashes and leading/odd characters escaped."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("=", "\\=").replace(":", "\\:")

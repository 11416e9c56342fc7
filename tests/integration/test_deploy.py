"""Every deployment file is checked (issue 11, must-show 1): the systemd unit, the Kubernetes manifests,
the Containerfile, the Grafana dashboard and the Prometheus rules.

Their command lines go through the real CLI parser and settings resolution, so a renamed flag fails
here; every metric name they use must be served by a live agent's /metrics, so a renamed metric
fails here too. No container builder can run on the test machine (no daemon, no image registry), so
the Containerfile's steps are exercised one by one: its COPY lines are the whole build context of a
wheel that is built and checked, its runtime packages are the ones that wheel's libvirt module links
against, and its ENTRYPOINT/CMD/USER/EXPOSE agree with the project and the DaemonSet.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import bridge
from bridge.cli import run
from bridge.cli.main import PROG, build_parser
from bridge.config import resolve
from devenv import free_port, wait_until
from tests.support.domains import unique_name, xml_for_test_driver

yaml: Any = importlib.import_module("yaml")  # PyYAML (test extra); no type stubs needed

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "systemd" / "libvirt-kafka-bridge.service"
K8S = DEPLOY / "kubernetes"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
DASHBOARD = DEPLOY / "grafana" / "libvirt-kafka-bridge.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts.test.yml"
METRICS_PORT = 9731  # README and http_server: the documented port
METRIC_RE = re.compile(r"\blibvirt_kafka_bridge_[a-z0-9_]+")

CHECKED = {UNIT, CONTAINERFILE, DASHBOARD, ALERTS, ALERTS_TEST,
           *(K8S / n for n in ("namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "daemonset.yaml",
                               "kustomization.yaml"))}


def test_every_deployment_file_is_checked_here():
    shipped = {p for d in ("systemd", "kubernetes", "container", "grafana", "prometheus")
               for p in (DEPLOY / d).rglob("*") if p.is_file()}
    assert shipped == CHECKED, "a deployment file without a test (or a test of a file that is gone)"


def parse_run(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """``argv`` (after the program name) through the real parser and run's settings resolution."""
    args = build_parser().parse_args(argv)
    assert args.command == "run" and args.execute is run.execute
    values = resolve(args, run.OPTIONS, env)
    run.settings_from(values)  # every validation run does before any I/O
    return values


def configmap_toml() -> str:
    (cm,) = [d for d in yaml.safe_load_all((K8S / "configmap.yaml").read_text()) if d["kind"] == "ConfigMap"]
    text: str = cm["data"]["config.toml"]
    return text


# -- systemd ---------------------------------------------------------------------------------------------


def unit_entries() -> list[tuple[str, str, str]]:
    """(section, key, value) in order; systemd allows repeated keys, so no dict."""
    out, section = [], ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def unit_value(key: str) -> str:
    values = [v for s, k, v in unit_entries() if k == key]
    assert len(values) == 1, (key, values)
    return values[0]


def venv_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console script (verify needs an executable)."""
    script = Path(sys.executable).parent / PROG
    assert script.is_file(), script
    text = UNIT.read_text()
    exec_start = unit_value("ExecStart")
    assert exec_start.startswith(f"/usr/local/bin/{PROG} ")  # where `pip install` puts it
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart=/usr/local/bin/{PROG} ", f"ExecStart={script} "))
    return copy


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    return path


def test_systemd_unit_verifies_cleanly(systemd_analyze, tmp_path):
    unit = venv_unit(tmp_path)
    result = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                            check=False)
    # Unknown or misspelt keys are only warnings ("Unknown key ..., ignoring"): any output is a failure.
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr
    security = subprocess.run([systemd_analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60, check=False)
    assert security.returncode == 0, security.stdout[-3000:]
    assert "Overall exposure level" in security.stdout


def test_systemd_unit_sandbox_and_restart_policy():
    v = unit_value
    assert v("Restart") == "on-failure" and v("RestartPreventExitStatus") == "2"  # user errors never loop
    assert v("NoNewPrivileges") == "yes" and v("ProtectSystem") == "strict" and v("ProtectHome") == "yes"
    assert v("PrivateTmp") == "yes" and v("CapabilityBoundingSet") == "" and v("AmbientCapabilities") == ""
    for key in ("ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert v(key) == "yes", key
    assert set(v("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert v("StateDirectory") == "libvirt-kafka-bridge"
    keys = [k for _s, k, _v in unit_entries()]
    assert "ReadWritePaths" not in keys, "the state directory (StateDirectory=) is the only writable path"
    assert v("ReadOnlyPaths") == "/run/libvirt"  # the libvirt sockets stay reachable
    assert v("EnvironmentFile").startswith("-/etc/")  # optional
    # The sandbox refuses the agent's own setpriority(2), so the unit sets its default --nice.
    denied = [x for _s, k, x in unit_entries() if k == "SystemCallFilter" and x.startswith("~")]
    assert any("@resources" in x.split() for x in denied), denied
    assert int(v("Nice")) == next(o.default for o in run.OPTIONS if o.name == "nice")


def test_systemd_exec_start_parses_through_the_cli(tmp_path):
    argv = shlex.split(unit_value("ExecStart"))
    assert Path(argv[0]).name == PROG
    config = argv[argv.index("--config") + 1]
    assert config == "/etc/libvirt-kafka-bridge.toml"  # the README's example path
    sample = tmp_path / "bridge.toml"
    sample.write_text(configmap_toml())
    argv[argv.index("--config") + 1] = str(sample)
    values = parse_run(argv[1:], {})
    assert values["state_dir"] == Path("/var/lib") / unit_value("StateDirectory")  # the writable one
    assert values["read_only"] is True


# -- Kubernetes ------------------------------------------------------------------------------------------


def manifests() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path
        doc = docs[0]
        assert doc["apiVersion"] and doc["kind"], path
        out[doc["kind"]] = doc
    return out


def test_kubernetes_manifests_parse_and_kustomize_lists_them_all():
    kinds = manifests()
    assert set(kinds) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Kustomization"}
    listed = set(kinds["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    namespace = kinds["Namespace"]["metadata"]["name"]
    for kind in ("ServiceAccount", "ConfigMap", "DaemonSet"):
        assert kinds[kind]["metadata"]["namespace"] == namespace, kind
    tomllib.loads(configmap_toml())  # valid TOML


def test_daemonset_probes_ports_mounts_and_security():
    kinds = manifests()
    ds = kinds["DaemonSet"]
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                                              "prometheus.io/path": "/metrics"}
    assert spec["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    (agent,) = spec["containers"]
    (port,) = agent["ports"]
    assert port["containerPort"] == METRICS_PORT
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]
    sc = agent["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert agent["image"].endswith(f":{bridge.__version__}")

    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    libvirt = mounts["/run/libvirt"]
    assert libvirt["readOnly"] is True
    assert volumes[libvirt["name"]]["hostPath"] == {"path": "/run/libvirt", "type": "Directory"}
    state = mounts["/var/lib/libvirt-kafka-bridge"]
    assert volumes[state["name"]]["hostPath"]["path"] == "/var/lib/libvirt-kafka-bridge"  # survives the pod
    assert volumes[mounts["/etc/libvirt-kafka-bridge"]["name"]]["configMap"]["name"] == \
        kinds["ConfigMap"]["metadata"]["name"]
    # The init container hands the hostPath to the agent's user, which is the image's USER.
    (init,) = spec["initContainers"]
    owner = f"{spec['securityContext']['runAsUser']}:{spec['securityContext']['runAsGroup']}"
    assert init["command"] == ["chown", owner, state["mountPath"]]
    assert init["securityContext"]["capabilities"]["add"] == ["CHOWN"]
    assert containerfile_value("USER") == owner


def test_daemonset_args_and_env_parse_through_the_cli(tmp_path):
    ds = manifests()["DaemonSet"]
    (agent,) = ds["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in agent["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "fieldRef" in var.get("valueFrom", {}):
            assert var["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[var["name"]] = "node-17"  # what the downward API gives
        else:
            assert var["valueFrom"]["secretKeyRef"]["optional"] is True
            env[var["name"]] = "sasl.username=bridge,sasl.password=example"
    assert env["BRIDGE_HOST_ID"] == "node-17"
    argv = list(agent["args"])
    config = Path(argv[argv.index("--config") + 1])
    config_mount = next(m for m in agent["volumeMounts"] if m["mountPath"] == str(config.parent))
    assert config_mount["readOnly"] is True and config.name in manifests()["ConfigMap"]["data"]
    local = tmp_path / config.name
    local.write_text(configmap_toml())
    argv[argv.index("--config") + 1] = str(local)
    values = parse_run(argv, env)
    assert values["host_id"] == "node-17"  # from the node name
    assert values["metrics_address"] == ("", METRICS_PORT)  # every address: the kubelet probes the pod IP
    assert str(values["state_dir"]) in {m["mountPath"] for m in agent["volumeMounts"]}
    assert values["kafka_config"]["sasl.password"] == "example" and values["read_only"] is True
    # The global --log-format has no place after `run`: it comes from the environment.
    assert env.get("BRIDGE_LOG_FORMAT") in {None, "text", "json"}


# -- Containerfile ---------------------------------------------------------------------------------------


def containerfile_stages() -> list[list[tuple[str, str]]]:
    """Stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def containerfile_value(instruction: str) -> str:
    final = containerfile_stages()[-1]
    (value,) = [v for i, v in final if i == instruction]
    return value


def apt_installs(stage: list[tuple[str, str]]) -> set[str]:
    out: set[str] = set()
    for inst, args in stage:
        if inst == "RUN" and "apt-get install" in args:
            words = args.split("apt-get install", 1)[1].split("&&")[0].split()
            out |= {w for w in words if not w.startswith("-")}
    return out


def test_containerfile_stages_entrypoint_and_cmd(tmp_path):
    build, final = containerfile_stages()
    assert build[0][1].startswith("docker.io/library/python:3.11-slim") and build[0][1].endswith(" AS build")
    assert final[0][1] == build[0][1].removesuffix(" AS build")  # the same Python in both stages
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    entry = json.loads(containerfile_value("ENTRYPOINT"))
    assert entry == [PROG] and PROG in pyproject["project"]["scripts"]
    cmd = json.loads(containerfile_value("CMD"))
    assert cmd == ["run"]
    parse_run(cmd, {})  # the image's default command is a valid run
    user = containerfile_value("USER")
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0  # non-root, numeric for runAsNonRoot
    assert containerfile_value("EXPOSE") == str(METRICS_PORT)
    state_dir_default = next(o.default for o in run.OPTIONS if o.name == "state_dir")
    assert json.loads(containerfile_value("VOLUME")) == [str(state_dir_default)]
    # The build stage's compiler packages are ones the dev bootstrap installs to build libvirt-python too.
    bootstrap = (DEPLOY / "dev" / "bootstrap.sh").read_text()
    apt_block = bootstrap.split("APT_PACKAGES=(", 1)[1].split(")", 1)[0].split()
    assert apt_installs(build) <= set(apt_block)


def test_containerfile_runtime_packages_are_what_libvirt_python_links_against():
    import libvirt  # noqa: PLC0415

    sonames = set()
    for ext in Path(libvirt.__file__).parent.glob("libvirtmod*.so"):
        ldd = subprocess.run(["ldd", str(ext)], capture_output=True, text=True, check=True, timeout=30).stdout
        sonames |= set(re.findall(r"\b(libvirt(?:-\w+)?\.so\.\d+)\b", ldd))
    assert "libvirt.so.0" in sonames
    owners = subprocess.run(["dpkg", "-S", *sorted(sonames)], capture_output=True, text=True, check=True,
                            timeout=30).stdout
    packages = {line.split(":")[0] for line in owners.splitlines()}
    assert apt_installs(containerfile_stages()[-1]) == packages == {"libvirt0"}


def test_containerfile_copy_lines_are_the_whole_context_of_the_projects_wheel(tmp_path):
    build, final = containerfile_stages()
    context = tmp_path / "src"
    context.mkdir()
    for inst, args in build:
        if inst != "COPY":
            continue
        *sources, dest = args.split()
        for src in sources:  # COPY's rules: into a directory when dest ends in "/", else to dest
            path = REPO / src
            target = context / dest / path.name if dest.endswith("/") else context / dest
            if path.is_dir():
                shutil.copytree(path, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, target)
    (wheel_step,) = [a for i, a in build if i == "RUN" and "pip wheel" in a]
    assert wheel_step.endswith(" .") and "--wheel-dir /wheels" in wheel_step
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    # The same pip step, without the dependencies (PyPI's wheels; libvirt-python is built by the bootstrap).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir",
                           str(wheels), "."], cwd=context, env=env, capture_output=True, text=True, timeout=600,
                          check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == f"libvirt_kafka_bridge-{bridge.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert f"{PROG} = bridge.cli.main:main" in zf.read(entry_points).decode()
    schemas = {p.name for p in (REPO / "schemas").glob("*.avsc")}
    assert {f"bridge/_schemas/{s}" for s in schemas} <= names
    assert {"bridge/cli/doctor.py", "bridge/cli/config_show.py", "bridge/py.typed"} <= names
    assert not any(n.startswith(("devenv/", "tests/")) for n in names)
    # The final stage installs exactly that project from the wheel directory.
    (install,) = [a for i, a in final if i == "RUN" and "pip install" in a]
    assert "--no-index --find-links /wheels libvirt-kafka-bridge" in install
    assert ("COPY", "--from=build /wheels /wheels") in final


# -- Prometheus and Grafana ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus, in deploy/dev/bootstrap.sh)")
    return path


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert exprs
    return exprs


def test_alert_rules_check_and_unit_tests_pass(promtool):
    for cmd in (["check", "rules", str(ALERTS)], ["test", "rules", str(ALERTS_TEST)]):
        result = subprocess.run([promtool, *cmd], capture_output=True, text=True, timeout=120, check=False,
                                cwd=ALERTS.parent)
        assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    tested = {t["alertname"] for case in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {r["alert"] for r in rules}, "every alert has a unit test that makes it fire"
    assert next(r for r in rules if r["alert"] == "LibvirtKafkaBridgeDown")["expr"].endswith("== 0")


def test_dashboard_is_valid_and_its_queries_are_valid_promql(promtool, tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert variables == {"datasource", "job", "instance"}
    # promtool checks PromQL in rule files: the dashboard's queries as recording rules, variables filled in.
    fill = {"$__rate_interval": "5m", "$__range": "1h", "$job": "libvirt-kafka-bridge", "$instance": ".*"}
    rules = []
    for n, query in enumerate(dashboard_exprs()):
        expr = query
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{n}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_every_metric_in_the_dashboard_and_rules_is_served_by_a_live_agent(libvirt_host, agent_factory, test_conn):
    port = free_port()
    agent = agent_factory(libvirt_host.test_uri, extra=["--metrics-address", f"127.0.0.1:{port}"]).start()

    def ready() -> bool:
        agent.check_alive()
        try:
            return http_get(port, "/readyz")[0] == 200
        except OSError:
            return False

    wait_until(ready, timeout=60, what="/readyz to answer 200")
    # Counters by event id have samples once an event is published: define and undefine a domain.
    test_conn.defineXML(xml_for_test_driver(unique_name("deploy"))).undefine()
    scraped: dict[str, Any] = {}

    def published() -> bool:
        status, text = http_get(port, "/metrics")
        assert status == 200
        scraped["text"] = text
        served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        scraped["served"] = served
        return "libvirt_kafka_bridge_events_published_total" in served

    wait_until(published, timeout=30, what="the domain's events on /metrics", interval=0.2)
    text, served = scraped["text"], scraped["served"]
    referenced = {
        "dashboard": set(METRIC_RE.findall(" ".join(dashboard_exprs()))),
        "alerts": set(METRIC_RE.findall(ALERTS.read_text())),
        "alert tests": set(METRIC_RE.findall(ALERTS_TEST.read_text())),
    }
    for where, names in referenced.items():
        assert names, where
        missing = names - served
        assert not missing, f"{where} uses metrics the agent does not serve: {sorted(missing)}"
    # The dashboard covers what the agent serves (a new metric belongs on it), process metrics aside.
    families = {f.name for f in text_string_to_metric_families(text)}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in referenced["dashboard"]}
    unshown = {f for f in families if not f.startswith("libvirt_kafka_bridge_process_")
               and not f.endswith("_created")} - shown  # _created: the histograms' creation times
    assert not unshown, f"served but not on the dashboard: {sorted(unshown)}"
    assert agent.terminate() == 0

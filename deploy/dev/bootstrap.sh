#!/usr/bin/env bash
# Sets up the dev/test bed on a Debian 12 machine, as root: apt packages, the libvirt-qemu user,
# the .venv with the project installed editable, and the Kafka broker jars in .cache/kafka-libs.
# Idempotent: each step checks (or stamps) what it already did, so a second run takes a second or so.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE="$REPO/.cache"
VENV="$REPO/.venv"
KAFKA_POM="$REPO/deploy/dev/kafka/pom.xml"
KAFKA_LIBS="${BRIDGE_KAFKA_LIBS:-$CACHE/kafka-libs}"
REGISTRY_POM="$REPO/deploy/dev/registry/pom.xml"
REGISTRY_DIR="${BRIDGE_REGISTRY_DIR:-$CACHE/apicurio-registry}"
PYTHON="${PYTHON:-python3}"

APT_PACKAGES=(
    gcc pkg-config libvirt-dev python3-dev python3-venv
    libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils tini kcat
    iproute2 maven openjdk-17-jre-headless
    systemd prometheus  # systemd-analyze verify and promtool, for the deploy/ tests
)

log() { echo "bootstrap: $*"; }
die() { echo "bootstrap: ERROR: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (installs apt packages and runs libvirtd)"
mkdir -p "$CACHE"
# Two concurrent runs (e.g. parallel make targets) would race on apt, pip and maven.
exec 9>"$CACHE/bootstrap.lock"
flock 9

apt_packages() {
    local missing=() pkg
    # One dpkg-query for all packages; ones never seen by dpkg print nothing and count as missing.
    local installed
    installed=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
    for pkg in "${APT_PACKAGES[@]}"; do
        grep -qx "$pkg installed" <<<"$installed" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "apt packages ok"
        return
    fi
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Only reached on a machine that lacks something, where the package lists may be stale or absent.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    log "apt packages ok"
}

libvirt_qemu_user() {
    # libvirtd's QEMU driver looks up its build-time user before reading qemu.conf and exits if it
    # is missing, even though our qemu.conf runs QEMU as root.
    if ! id -u libvirt-qemu >/dev/null 2>&1; then
        useradd -r -U -M -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
        log "created user libvirt-qemu"
    fi
    log "libvirt-qemu user ok"
}

python_venv() {
    [[ -f "$REPO/pyproject.toml" ]] || die "no pyproject.toml in $REPO"
    local stamp="$VENV/.bootstrap-pyproject.sha256" want
    want=$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)
    # A venv whose interpreter went away (pyenv upgrade, moved repo) is rebuilt from scratch.
    if [[ -x "$VENV/bin/python" ]] && ! "$VENV/bin/python" -c '' 2>/dev/null; then
        log "venv broken, recreating"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating venv with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    fi
    if [[ -f "$stamp" && $(cat "$stamp") == "$want" ]]; then
        log "venv ok"
        return
    fi
    log "installing project into venv (pip install -e '.[test]')"
    # pip's output (build-backend warnings included) goes to a log shown only on failure.
    if ! (cd "$REPO" && "$VENV/bin/python" -m pip install -e '.[test]') >"$CACHE/pip.log" 2>&1; then
        tail -n 40 "$CACHE/pip.log" >&2
        die "pip install failed (full log: $CACHE/pip.log)"
    fi
    echo "$want" >"$stamp"
    log "venv ok"
}

kafka_jars() {
    local stamp="$KAFKA_LIBS/.pom.sha256" want
    want=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
    if [[ -f "$stamp" && $(cat "$stamp") == "$want" ]] && compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null; then
        log "kafka jars ok"
        return
    fi
    log "resolving kafka jars with maven into $KAFKA_LIBS"
    # Old jars (and the class-data archive built from them) must not mix with the new set.
    rm -rf "$KAFKA_LIBS" "$KAFKA_LIBS.jsa"
    # Maven's output (even with -q it prints colour escapes) goes to a log shown only on failure.
    if ! mvn -B -Dstyle.color=never -f "$KAFKA_POM" -Dkafka.libs.dir="$KAFKA_LIBS" >"$CACHE/mvn.log" 2>&1; then
        tail -n 40 "$CACHE/mvn.log" >&2
        die "maven could not resolve the kafka jars (full log: $CACHE/mvn.log)"
    fi
    compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null || die "maven ran but no kafka_2.13 jar in $KAFKA_LIBS"
    echo "$want" >"$stamp"
    log "kafka jars ok ($(du -sh "$KAFKA_LIBS" | cut -f1))"
}

java_tools() {
    # The Java oracles (tests/java/oracle) and the Kafka Streams example (examples/java/fleet-table),
    # built into .cache/java/<name>/ (<name>.jar + lib/) for the tests that run them with `java -jar`.
    # Each pom takes -Dbridge.build.dir (default: its own target/).
    local out="$CACHE/java" stamp want project name
    local projects=("$REPO/tests/java/oracle" "$REPO/examples/java/fleet-table")
    stamp="$out/.sources.sha256"
    # Every file of every project (poms, sources, resources) but a stray target/ from a manual build.
    want=$(for project in "${projects[@]}"; do
        (cd "$project" && find . -path ./target -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum)
    done | sha256sum | cut -d' ' -f1)
    local built=1
    for project in "${projects[@]}"; do
        name=$(basename "$project")
        [[ -f "$out/$name/$name.jar" ]] || built=0
    done
    if [[ -f "$stamp" && $(cat "$stamp") == "$want" ]] && ((built)); then
        log "java tools ok"
        return
    fi
    # Debian's maven package brings a JRE only; compiling needs the JDK.
    if ! command -v javac >/dev/null; then
        log "installing openjdk-17-jdk-headless (javac)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jdk-headless >/dev/null
    fi
    log "building java tools with maven into $out"
    rm -rf "$out"
    : >"$CACHE/mvn-java.log"
    for project in "${projects[@]}"; do
        name=$(basename "$project")
        # `package` also copies the runtime dependencies into lib/ (see each pom); output to a log.
        if ! mvn -B -q -Dstyle.color=never -f "$project/pom.xml" -Dbridge.build.dir="$out/$name" package \
                >>"$CACHE/mvn-java.log" 2>&1; then
            tail -n 40 "$CACHE/mvn-java.log" >&2
            die "maven could not build $project (full log: $CACHE/mvn-java.log)"
        fi
    done
    echo "$want" >"$stamp"
    log "java tools ok"
}

registry_dist() {
    # Apicurio Registry (Confluent-compatible Schema Registry) for the Confluent wire-format tests.
    local stamp="$REGISTRY_DIR/.pom.sha256" want
    want=$(sha256sum "$REGISTRY_POM" | cut -d' ' -f1)
    if [[ -f "$stamp" && $(cat "$stamp") == "$want" ]] && compgen -G "$REGISTRY_DIR/apicurio-registry-app-*-runner.jar" >/dev/null; then
        log "schema registry ok"
        return
    fi
    log "resolving the schema registry (Apicurio) with maven into $REGISTRY_DIR"
    rm -rf "$REGISTRY_DIR"
    if ! mvn -B -Dstyle.color=never -f "$REGISTRY_POM" -Dregistry.dir="$REGISTRY_DIR" >"$CACHE/mvn-registry.log" 2>&1; then
        tail -n 40 "$CACHE/mvn-registry.log" >&2
        die "maven could not resolve the schema registry (full log: $CACHE/mvn-registry.log)"
    fi
    compgen -G "$REGISTRY_DIR/apicurio-registry-app-*-runner.jar" >/dev/null \
        || die "maven ran but no apicurio-registry-app runner jar in $REGISTRY_DIR"
    echo "$want" >"$stamp"
    log "schema registry ok ($(du -sh "$REGISTRY_DIR" | cut -f1))"
}

apt_packages
libvirt_qemu_user
python_venv
kafka_jars
registry_dist
java_tools
log "done"

"""Random domain churn against a libvirt test-driver URI, as a separate process.

``python -m devenv.churn --uri test+unix:///default?socket=... --ops 250 --seed 7 --prefix c1``
makes random, valid operations on a small pool of domains whose names start with ``prefix``:
define, redefine, undefine, start, destroy, suspend, resume, transient create, persist a transient
domain, metadata change, rename, save/restore. It prints one JSON summary line at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid as uuid_mod
from pathlib import Path

import libvirt

from devenv.pacing import Pacer


def domain_xml(name: str, uuid: str, memory_mib: int = 64) -> str:
    return (f"<domain type='test'><name>{name}</name><uuid>{uuid}</uuid>"
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type></os></domain>")


class Churn:
    """Applies random operations; every operation is valid for the domain's current state."""

    def __init__(self, conn: libvirt.virConnect, prefix: str, rng: random.Random, pool: int, workdir: Path) -> None:
        self.conn = conn
        self.prefix = prefix
        self.rng = rng
        self.pool = pool
        self.workdir = workdir
        self.ops: dict[str, int] = {}
        self.touched: set[str] = set()
        self.counter = 0

    def mine(self) -> list[libvirt.virDomain]:
        return [d for d in self.conn.listAllDomains(0) if d.name().startswith(self.prefix)]

    def step(self) -> str:
        doms = self.mine()
        choices = ["define", "create_transient"] if len(doms) < self.pool else []
        if doms:
            choices += ["pick"] * 4
        op = self.rng.choice(choices or ["pick"])
        if op == "pick":
            dom = self.rng.choice(doms)
            op = self._op_for(dom)
            self._apply(op, dom)
        else:
            self._create(op)
        self.ops[op] = self.ops.get(op, 0) + 1
        return op

    def _new_name(self) -> str:
        self.counter += 1
        return f"{self.prefix}-{self.counter}"

    def _create(self, op: str) -> None:
        uuid = str(uuid_mod.uuid4())
        self.touched.add(uuid)
        xml = domain_xml(self._new_name(), uuid)
        if op == "define":
            self.conn.defineXML(xml)
        else:
            self.conn.createXML(xml, 0)

    def _op_for(self, dom: libvirt.virDomain) -> str:
        state = dom.state()[0]
        persistent = dom.isPersistent()
        if state == libvirt.VIR_DOMAIN_RUNNING:
            ops = ["suspend", "destroy", "metadata", "save"] + (["redefine"] if persistent else ["persist"])
            if persistent:
                ops.append("undefine_running")
        elif state == libvirt.VIR_DOMAIN_PAUSED:
            ops = ["resume", "destroy", "metadata"]
        else:  # shut off: only persistent domains can be here
            ops = ["start", "undefine", "redefine", "rename", "metadata"]
        return self.rng.choice(ops)

    def _apply(self, op: str, dom: libvirt.virDomain) -> None:
        self.touched.add(dom.UUIDString())
        if op == "suspend":
            dom.suspend()
        elif op == "resume":
            dom.resume()
        elif op == "destroy":
            dom.destroy()
        elif op == "start":
            dom.create()
        elif op in ("undefine", "undefine_running"):
            dom.undefine()
        elif op == "redefine":
            self.conn.defineXML(domain_xml(dom.name(), dom.UUIDString(), self.rng.choice([64, 128, 256])))
        elif op == "persist":
            self.conn.defineXML(domain_xml(dom.name(), dom.UUIDString()))
        elif op == "rename":
            dom.rename(self._new_name(), 0)
        elif op == "metadata":
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, f"churn {self.rng.random()}", None, None, 0)
        elif op == "save":
            path = self.workdir / f"{dom.UUIDString()}.save"
            dom.save(str(path))
            self.conn.restore(str(path))
            path.unlink(missing_ok=True)
        else:
            raise ValueError(op)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive()) and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def _reconnect(uri: str, timeout: float = 60.0) -> libvirt.virConnect:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)  # libvirtd is restarting


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", required=True)
    p.add_argument("--ops", type=int, default=250)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default="churn")
    p.add_argument("--pool", type=int, default=12)
    p.add_argument("--rate", type=float, default=0.0, help="operations per second (0: as fast as possible)")
    p.add_argument("--cleanup", action="store_true", help="undefine/destroy every pool domain at the end")
    p.add_argument("--keep-going", action="store_true",
                   help="survive libvirtd restarts (reconnect) and operations that lose a race (count them)")
    args = p.parse_args(argv)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions anyway
    conn = libvirt.open(args.uri)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        churn = Churn(conn, args.prefix, rng, args.pool, Path(tmp))
        start = time.monotonic()
        pacer = Pacer(args.rate) if args.rate else None
        failed = reconnects = 0
        for i in range(args.ops):
            if pacer is not None:
                pacer.wait_turn(i)
            try:
                churn.step()
            except libvirt.libvirtError:
                if not args.keep_going:
                    raise
                failed += 1
                if not _alive(churn.conn):
                    churn.conn = _reconnect(args.uri)
                    reconnects += 1
        if args.cleanup:
            for dom in churn.mine():
                if dom.isActive():
                    dom.destroy()
                if dom.isPersistent():
                    dom.undefine()
        elapsed = time.monotonic() - start
    print(json.dumps({"ops": args.ops, "by_op": churn.ops, "touched": sorted(churn.touched),
                      "seconds": round(elapsed, 3), "failed": failed, "reconnects": reconnects}))
    churn.conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Domain XML for tests: the test driver and minimal real QEMU/TCG guests."""

from __future__ import annotations

import uuid as uuid_mod

import libvirt


def unique_name(prefix: str = "vm") -> str:
    return f"{prefix}-{uuid_mod.uuid4().hex[:10]}"


def xml_for_test_driver(name: str, uuid: str | None = None, vnc_password: str | None = None) -> str:
    """A domain for the libvirt test driver."""
    graphics = f"<graphics type='vnc' port='-1' passwd='{vnc_password}'/>" if vnc_password else ""
    return f"""<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid or uuid_mod.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>{graphics}</devices>
</domain>"""


def qemu_xml(name: str, serial_log: str, uuid: str | None = None, vnc_password: str | None = None) -> str:
    """A 64 MiB TCG guest with no disk: SeaBIOS keeps retrying boot, so it just stays running."""
    graphics = (f"<graphics type='vnc' port='-1' listen='127.0.0.1' passwd='{vnc_password}'/>"
                if vnc_password else "")
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid or uuid_mod.uuid4()}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <serial type='file'><source path='{serial_log}'/><target port='0'/></serial>
    <memballoon model='none'/>
    {graphics}
  </devices>
</domain>"""


def remove_domains(conn, prefix: str) -> None:
    """Destroy and undefine every domain whose name starts with ``prefix`` (persistence read first:
    destroying a transient domain removes it)."""
    for dom in conn.listAllDomains(0):
        if not dom.name().startswith(prefix):
            continue
        try:
            persistent = dom.isPersistent()
            if dom.isActive():
                dom.destroy()
            if persistent:
                dom.undefine()
        except libvirt.libvirtError:
            continue  # gone meanwhile

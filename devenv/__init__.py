"""The real local environment for tests, ``make demo`` and ``make bench``.

Kafka brokers run from Maven-resolved jars and libvirt daemons run in private mount namespaces,
all on this machine; ``deploy/dev/bootstrap.sh`` installs what they need.
"""

from devenv._proc import DevEnvError, WaitTimeout, hold, wait_until
from devenv.kafka import KafkaCluster
from devenv.libvirtd import LibvirtHost, domain_xml
from devenv.ports import free_port, free_ports

__all__ = [
    "DevEnvError",
    "KafkaCluster",
    "LibvirtHost",
    "WaitTimeout",
    "domain_xml",
    "free_port",
    "free_ports",
    "hold",
    "wait_until",
]

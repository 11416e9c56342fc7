"""Entry point: ``libvirt-kafka-bridge <command>``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bridge import __version__
from bridge.cli import config_show, doctor, resync, run, state, tail, watch
from bridge.errors import UserError
from bridge.logging_setup import LOG_FORMATS, configure_logging

PROG = "libvirt-kafka-bridge"

DESCRIPTION = """\
Turns libvirt domain events into a versioned, compacted Kafka log, and reads it back.

  run     the per-host agent: publish every domain event with a fresh snapshot and a version
  tail    print the records on the topics as they are (decoded)
  state   the fleet's current domains, rebuilt from the log alone
  watch   the current domains, then every change as it happens
  resync  ask agents to relist their domains now (a signal on the control topic)
  doctor  check libvirt, Kafka, the topics, the state directory and the clock with run's settings
  config  `config show`: the effective settings of run and where each came from, secrets masked

Every setting is a flag, a BRIDGE_* environment variable, or a key in a TOML file (--config).
"""

EPILOG = """\
examples:
  libvirt-kafka-bridge run --bootstrap-servers kafka1:9092 --libvirt-uri qemu:///system
  libvirt-kafka-bridge tail --from-beginning --uuid 8ff7047b-fb46-44ff-a4c6-7c20c73ab86e
  libvirt-kafka-bridge state --output json --host hv01
  libvirt-kafka-bridge doctor --config /etc/libvirt-kafka-bridge.toml
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default: INFO for run, WARNING for the reading commands)")
    parser.add_argument("--log-format", default=None, choices=LOG_FORMATS,
                        help="text for people, json for log shippers: one JSON object per line, "
                             "librdkafka's lines included (default: text); env BRIDGE_LOG_FORMAT")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (run, tail, state, watch, resync, doctor, config_show):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 for user errors, 130 on Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    level = args.log_level or ("INFO" if args.command == "run" else "WARNING")
    log_format = args.log_format or os.environ.get("BRIDGE_LOG_FORMAT", "text")
    if log_format not in LOG_FORMATS:
        print(f"{PROG}: error: bad environment variable BRIDGE_LOG_FORMAT: {log_format!r} is not "
              f"{' or '.join(LOG_FORMATS)}", file=sys.stderr)
        return 2
    configure_logging(level, log_format)
    try:
        status: int = args.execute(args)
    except UserError as exc:
        if log_format == "json":  # a log shipper reads stderr: the error is a log record too
            logging.getLogger("bridge.cli").error("error: %s", exc)
        else:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())

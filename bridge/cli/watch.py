"""Placeholder until the consumer CLI lands."""

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("watch", help="(not yet available)")
    p.set_defaults(execute=lambda args: 2)

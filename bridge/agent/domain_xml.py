"""What the agent reads from a domain's XML itself: whether it is active, and its name.

The live XML's root carries ``id='N'`` exactly when the domain is active (what ``virDomainIsActive``
tests), and its first ``<name>`` is the domain's (it comes before any device's), so a snapshot needs
no call for either. A regular expression, not an XML parser: the XML is libvirt's own output, and
this runs once per record.
"""

from __future__ import annotations

import html
import re

# The root element's attributes and the first <name> (the domain's: it comes before any device's).
_ROOT = re.compile(r"<domain\b([^>]*)>")
_ID_ATTR = re.compile(r"""\sid=['"](-?\d+)['"]""")
_NAME = re.compile(r"<name>([^<]*)</name>")


def xml_active_and_name(xml: str) -> tuple[bool, str | None]:
    """(active, name) as the domain XML says: active when the root has an ``id`` other than -1."""
    root = _ROOT.search(xml)
    ident = _ID_ATTR.search(root.group(1)) if root else None
    name = _NAME.search(xml)
    return (ident is not None and int(ident.group(1)) != -1), (html.unescape(name.group(1)) if name else None)

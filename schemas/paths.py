"""Dotted paths into a JSON payload (`data.file_id`, `tasks.0.id`), read one way everywhere.

Sources (`type_path`, `id_path`), route `where` conditions and handler options (`file_id_path`)
all name values in a payload by such a path; this is the one reader of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MISSING: Any = object()


def lookup(payload: Any, path: str, missing: Any = None) -> Any:
    """The value at `path`, or `missing` when some step of it is not there. A step into a list
    is an index of ASCII digits only (`str.isdigit` also takes "²", which `int` refuses)."""
    node = payload
    for part in path.split("."):
        if isinstance(node, Mapping):
            node = node.get(part, MISSING)
        elif isinstance(node, list) and part.isascii() and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return missing
        if node is MISSING:
            return missing
    return node

"""Values in etcd are msgpack maps with a schema version ``v``; the only module importing msgpack.

Decoding keeps every field, known or not, so a value written by a newer conductor survives a
read-modify-write by an older one.
"""
from __future__ import annotations

from typing import Any

import msgpack

SCHEMA_VERSION = 1


def pack(value: dict[str, Any]) -> bytes:
    """Encode a map, stamping the schema version when it has none."""
    if "v" not in value:
        value = {"v": SCHEMA_VERSION, **value}
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    """Decode a value written by :func:`pack`; an empty value decodes to an empty map."""
    if not data:
        return {}
    value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if not isinstance(value, dict):
        return {"v": 0, "value": value}
    return value

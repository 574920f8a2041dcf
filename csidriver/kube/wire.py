"""Watch events of a whole collection, decoded by a compiled decoder (msgspec) into what the driver reads.

The controller streams every DeviceVolume of the cluster when it starts: 100,000 objects are about 180 MB of JSON,
and most of each object is metadata.managedFields, which nothing here reads. The standard library's decoder builds
every dict and string of it and then the informer drops it; the decoder here skips it while it parses, in C, and
builds the rest as plain dicts, as json.loads would have. On this machine that is about a fifth of the CPU the
standard decoder spends on the same lines (bench/controller_scale.py measures the whole sync).

It knows the top-level fields of an object with spec and status (apiVersion, kind, metadata, spec, status) and every
field of ObjectMeta but managedFields; a field absent from the line stays absent from the dict. It is for kinds of
that shape only: DeviceVolume, DeviceSnapshot, Lease (not DeviceNode, whose disks sit in a top-level `devices`).
An ERROR event (its object a Status), or a line of any other shape, is decoded by the standard decoder: the result
is then the same, only slower.

Only the controller imports this module (the agents' informers read a few objects of their own node).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = ["TOP_LEVEL_FIELDS", "decode_event"]


class _Meta(msgspec.Struct, omit_defaults=True):
    """ObjectMeta (meta/v1), every field but managedFields."""

    name: Any = UNSET
    generateName: Any = UNSET
    namespace: Any = UNSET
    selfLink: Any = UNSET
    uid: Any = UNSET
    resourceVersion: Any = UNSET
    generation: Any = UNSET
    creationTimestamp: Any = UNSET
    deletionTimestamp: Any = UNSET
    deletionGracePeriodSeconds: Any = UNSET
    labels: Any = UNSET
    annotations: Any = UNSET
    ownerReferences: Any = UNSET
    finalizers: Any = UNSET


class _Object(msgspec.Struct, omit_defaults=True):
    apiVersion: Any = UNSET
    kind: Any = UNSET
    metadata: _Meta | UnsetType = UNSET
    spec: Any = UNSET
    status: Any = UNSET


class _Event(msgspec.Struct):
    type: str
    object: _Object


TOP_LEVEL_FIELDS = frozenset(_Object.__struct_fields__)
_DECODER = msgspec.json.Decoder(_Event)


def decode_event(line: bytes) -> dict[str, Any]:
    """One line of a watch: {"type": ..., "object": {...}} as json.loads gives it, without managedFields."""
    try:
        event = _DECODER.decode(line)
    except msgspec.MsgspecError:
        parsed: dict[str, Any] = json.loads(line)
        return parsed
    if event.type == "ERROR":
        status: dict[str, Any] = json.loads(line)  # a Status: code, reason, message
        return status
    return {"type": event.type, "object": msgspec.to_builtins(event.object)}

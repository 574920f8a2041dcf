"""The compiled decoder of watch lines (csidriver.kube.wire): the same dicts json.loads gives, less managedFields."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from csidriver.kube.wire import TOP_LEVEL_FIELDS, decode_event

CRDS = Path(__file__).resolve().parents[2] / "crds"

MANAGED = [
    {
        "apiVersion": "local.openebs.io/v1alpha1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {"f:state": {}, "f:conditions": {'k:{"type":"Ready"}': {".": {}}}}},
        "manager": "device-localpv-agent",
        "operation": "Update",
        "time": "2026-12-08T00:31:37Z",
    }
]


def volume_event(kind: str = "MODIFIED") -> dict[str, Any]:
    """Every field of ObjectMeta set, odd values included, as a watch line carries them."""
    return {
        "type": kind,
        "object": {
            "apiVersion": "local.openebs.io/v1alpha1",
            "kind": "DeviceVolume",
            "metadata": {
                "name": "pvc-1",
                "generateName": "pvc-",
                "namespace": "openebs",
                "selfLink": "",
                "uid": "5b3302a3-5096-457a-9928-717d1d4a3b34",
                "resourceVersion": "5231",
                "generation": 2,
                "creationTimestamp": "2026-12-08T00:31:37Z",
                "deletionTimestamp": "2026-12-08T00:40:00Z",
                "deletionGracePeriodSeconds": 0,
                "labels": {"kubernetes.io/nodename": "node-1"},
                "annotations": {"local.openebs.io/csi-name": "pvc-1", "weird": ""},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "y", "uid": "z"}],
                "finalizers": ["device.openebs.io/finalizer"],
                "managedFields": MANAGED,
            },
            "spec": {"capacity": "1Gi", "devname": "ssd", "ownerNodeID": "node-1", "future": {"a": [1, 2.5, None]}},
            "status": {
                "state": "Ready",
                "capacityBytes": 1073741824,
                "partitionNumber": 3,
                "inventoryGeneration": 12,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Provisioned", "message": "ünïcode"}],
                "error": None,
            },
        },
    }


def without_managed_fields(event: dict[str, Any]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(event))
    copy["object"]["metadata"].pop("managedFields", None)
    return copy


def test_a_volume_event_decodes_as_json_loads_does_less_its_managed_fields() -> None:
    event = volume_event()
    got = decode_event(json.dumps(event).encode())
    assert got == without_managed_fields(event)
    assert "managedFields" not in got["object"]["metadata"]
    assert got["object"]["status"]["error"] is None, "an explicit null stays, as json.loads keeps it"


def test_absent_fields_stay_absent() -> None:
    line = b'{"type":"ADDED","object":{"metadata":{"name":"v","resourceVersion":"7","managedFields":[]}}}'
    assert decode_event(line) == {"type": "ADDED", "object": {"metadata": {"name": "v", "resourceVersion": "7"}}}


def test_a_bookmark_keeps_its_annotations() -> None:
    line = (
        b'{"type":"BOOKMARK","object":{"kind":"DeviceVolume","apiVersion":"local.openebs.io/v1alpha1",'
        b'"metadata":{"resourceVersion":"99","annotations":{"k8s.io/initial-events-end":"true"}}}}'
    )
    assert decode_event(line) == json.loads(line)


def test_an_error_event_keeps_its_whole_status() -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": 410,
        "reason": "Expired",
        "message": "m",
    }
    line = json.dumps({"type": "ERROR", "object": status}).encode()
    assert decode_event(line) == {"type": "ERROR", "object": status}


@pytest.mark.parametrize(
    "line",
    [
        b'{"type":"ADDED","object":[1,2]}',
        b'{"type":"ADDED","object":{"metadata":"not an object"}}',
        b'{"object":{"metadata":{"name":"v"}}}',
        b'{"type":7,"object":{}}',
    ],
)
def test_any_other_shape_is_decoded_as_json_loads_decodes_it(line: bytes) -> None:
    assert decode_event(line) == json.loads(line)


def test_a_line_that_is_not_json_raises_as_json_loads_does() -> None:
    with pytest.raises(ValueError):
        decode_event(b'{"type":"ADDED","object":{')


@pytest.mark.parametrize("crd", ["devicevolume.yaml", "devicesnapshot.yaml"])
def test_the_decoder_knows_every_top_level_field_of_the_kinds_it_reads(crd: str) -> None:
    """A top-level field added to one of these CRDs would be dropped by the decoder, silently: add it there."""
    doc = yaml.safe_load((CRDS / crd).read_text())
    for version in doc["spec"]["versions"]:
        fields = set(version["schema"]["openAPIV3Schema"]["properties"])
        assert fields <= TOP_LEVEL_FIELDS, f"{crd} {version['name']}: {sorted(fields - TOP_LEVEL_FIELDS)}"

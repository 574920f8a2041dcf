"""Static checks of the Kubernetes manifests (crds/, deploy/) and of the image build files.

Pure Python: no cluster needed. The CRD names and fields checked here are the compatibility contract
with OpenEBS Device-LocalPV (docs: /work/shared/design/compat.md), so a change that breaks one of
these tests breaks existing users.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
DEPLOY = ROOT / "deploy"
NAMESPACE = "openebs"
DRIVER = "device.csi.openebs.io"
GROUP = "local.openebs.io"
ORIGINAL = "v1alpha1"  # the original's version: storage, status in the main resource
VERSION = "v1alpha2"  # this driver's: same schema, status subresource (volumes)

Obj = dict[str, Any]


def _docs(path: Path) -> list[Obj]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _manifest_files() -> list[Path]:
    return sorted([*CRDS.glob("*.yaml"), *DEPLOY.glob("*.yaml")])


def _all_objects() -> list[Obj]:
    return [d for p in _manifest_files() for d in _docs(p) if d.get("kind") != "Kustomization"]


def _one(kind: str, name: str) -> Obj:
    found = [d for d in _all_objects() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def _crd(plural: str) -> Obj:
    return _one("CustomResourceDefinition", f"{plural}.{GROUP}")


def _version(crd: Obj, name: str = VERSION) -> Obj:
    versions: list[Obj] = crd["spec"]["versions"]
    assert [v["name"] for v in versions] == [ORIGINAL, VERSION]
    return next(v for v in versions if v["name"] == name)


def _schema(crd: Obj) -> Obj:
    schema: Obj = _version(crd)["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Obj]]:
    """Every schema node with its path (properties by name, items as [])."""
    if not isinstance(node, dict):
        return
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    for i, child in enumerate(node.get("anyOf", [])):
        yield from _walk(child, f"{path}<anyOf{i}>")


def _containers(workload: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in workload["spec"]["template"]["spec"]["containers"]}


def _env(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def _rules(kind: str, name: str) -> list[Obj]:
    rules: list[Obj] = _one(kind, name)["rules"]
    return rules


def _grants(rules: list[Obj], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for rule in rules:
        if group in rule.get("apiGroups", []) and resource in rule.get("resources", []):
            verbs.update(rule["verbs"])
    return verbs


# --------------------------------------------------------------------------------------------- files


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_manifest_parses_and_names_itself(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind"), doc
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"]


def test_namespaced_objects_live_in_openebs() -> None:
    cluster_scoped = {
        "Namespace",
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "CSIDriver",
        "StorageClass",
    }
    for obj in _all_objects():
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], obj["metadata"]
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]
    assert _one("Namespace", NAMESPACE)


# ---------------------------------------------------------------------------------------------- CRDs


@pytest.mark.parametrize(
    ("plural", "singular", "kind", "short"),
    [
        ("devicevolumes", "devicevolume", "DeviceVolume", ["devicevol"]),
        ("devicenodes", "devicenode", "DeviceNode", ["devnode"]),
    ],
)
def test_crd_names_are_the_original_ones(plural: str, singular: str, kind: str, short: list[str]) -> None:
    crd = _crd(plural)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = crd["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": singular,
        "shortNames": short,
    }
    original, ours = _version(crd, ORIGINAL), _version(crd)
    assert (original["served"], original["storage"]) == (True, True)
    assert (ours["served"], ours["storage"]) == (True, False)
    # One schema, columns and selectable fields for both: the API server converts by changing apiVersion only.
    for key in ("schema", "additionalPrinterColumns", "selectableFields"):
        assert original.get(key) == ours.get(key), key
    assert "conversion" not in spec or spec["conversion"] == {"strategy": "None"}


@pytest.mark.parametrize("plural", ["devicevolumes", "devicenodes"])
def test_crd_schema_is_structural(plural: str) -> None:
    """The rules of a structural schema that a YAML-only check can see."""
    schema = _schema(_crd(plural))
    assert schema["type"] == "object"
    assert schema["properties"]["metadata"] == {"type": "object"}
    for path, node in _walk(schema):
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            assert [b["type"] for b in node["anyOf"]] == ["integer", "string"], path
        elif "<anyOf" not in path:
            assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        if node.get("type") == "array":
            assert "items" in node, path
        for req in node.get("required", []):
            assert req in node["properties"], f"{path}: required {req} is not a property"
        if node.get("x-kubernetes-list-type") == "map":
            for key in node["x-kubernetes-list-map-keys"]:
                assert key in node["items"]["required"], f"{path}: map key {key} must be required"
        for pattern in [node["pattern"]] if "pattern" in node else []:
            re.compile(pattern)
        if "enum" in node:
            assert all(isinstance(v, str) for v in node["enum"]), path
    # Unknown fields are pruned everywhere: nothing preserves them.
    assert "x-kubernetes-preserve-unknown-fields" not in yaml.safe_dump(schema)


def test_devicevolume_spec_contract() -> None:
    crd = _crd("devicevolumes")
    schema = _schema(crd)
    assert schema["required"] == ["spec"]
    spec = schema["properties"]["spec"]
    assert sorted(spec["required"]) == ["capacity", "devname", "ownerNodeID"]
    props = spec["properties"]
    assert set(props) == {"ownerNodeID", "capacity", "devname"}
    assert all(p["type"] == "string" for p in props.values())
    assert (props["ownerNodeID"]["minLength"], props["ownerNodeID"]["maxLength"]) == (1, 253)
    capacity = re.compile(props["capacity"]["pattern"])
    assert capacity.fullmatch("1073741824")
    assert not capacity.search("1Gi")
    devname = re.compile(props["devname"]["pattern"])
    assert (props["devname"]["minLength"], props["devname"]["maxLength"]) == (1, 36)
    assert devname.fullmatch("nvme-ssd_2.a")
    assert not devname.search("bad name")


def test_devicevolume_immutability_leaves_the_node_movable() -> None:
    props = _schema(_crd("devicevolumes"))["properties"]["spec"]["properties"]
    rules = {f: [v["rule"] for v in props[f]["x-kubernetes-validations"]] for f in ("capacity", "devname")}
    # capacity: a positive int64 that only grows
    assert rules == {"capacity": ["int(self) > 0", "int(self) >= int(oldSelf)"], "devname": ["self == oldSelf"]}
    assert "x-kubernetes-validations" not in props["ownerNodeID"]
    assert "x-kubernetes-validations" not in _schema(_crd("devicevolumes"))["properties"]["spec"]


def test_devicevolume_status_contract() -> None:
    crd = _crd("devicevolumes")
    version = _version(crd)
    assert version["subresources"] == {"status": {}}
    # The original's components write status with a plain update: no subresource on their version.
    assert "subresources" not in _version(crd, ORIGINAL)
    assert version["selectableFields"] == [{"jsonPath": ".spec.ownerNodeID"}]
    status = _schema(crd)["properties"]["status"]
    props = status["properties"]
    assert props["state"]["enum"] == ["Pending", "Ready", "Failed"]
    assert props["error"]["properties"]["code"]["enum"] == ["Internal", "InsufficientCapacity"]
    assert props["error"]["properties"]["message"]["type"] == "string"
    for name in ("diskGUID", "diskPath", "partitionName", "partitionUUID", "devicePath"):
        assert props[name]["type"] == "string", name
    for name in ("partitionNumber", "capacityBytes"):
        assert props[name]["type"] == "integer", name
    conditions = props["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]["properties"]
    assert item["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["lastTransitionTime"]["format"] == "date-time"
    assert item["observedGeneration"]["type"] == "integer"


def test_devicevolume_printer_columns() -> None:
    columns = {c["name"]: c for c in _version(_crd("devicevolumes"))["additionalPrinterColumns"]}
    assert list(columns) == ["Node", "Pool", "Size", "State", "Partition", "Disk", "Age"]
    assert columns["Node"]["jsonPath"] == ".spec.ownerNodeID"
    assert columns["Pool"]["jsonPath"] == ".spec.devname"
    assert columns["Size"]["jsonPath"] == ".spec.capacity"
    assert columns["State"]["jsonPath"] == ".status.state"
    assert columns["Partition"]["priority"] == columns["Disk"]["priority"] == 1
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_devicenode_contract() -> None:
    crd = _crd("devicenodes")
    version = _version(crd)
    assert "subresources" not in version
    schema = _schema(crd)
    assert "spec" not in schema["properties"]
    assert "status" not in schema["properties"]
    devices = schema["properties"]["devices"]
    assert devices["type"] == "array"
    item = devices["items"]
    assert sorted(item["required"]) == ["free", "name", "size", "uuid"]
    props = item["properties"]
    assert set(props) >= {"name", "uuid", "size", "free"}
    assert set(props) - {"name", "uuid", "size", "free"} == {
        "path",
        "largestExtent",
        "freeEntries",
        "healthy",
        "serial",
        "wwn",
        "cordoned",
    }
    quantity = re.compile(props["size"]["pattern"])
    # Whole bytes as Go's resource.Quantity writes them (what the original stores), nothing fractional.
    for good in ("0", "1073741824", "10Gi", "1536Mi", "500M", "1k"):
        assert quantity.fullmatch(good), good
    for bad in ("", "ten", "10 Gi", "-1", "10GB", "1.5G", "1e3", "1500m", "1n", "0.5", "+1", "9" * 20):
        assert not quantity.fullmatch(bad), bad
    for name in ("size", "free", "largestExtent"):
        assert props[name]["x-kubernetes-int-or-string"] is True
    assert props["freeEntries"]["minimum"] == 0
    assert props["healthy"]["type"] == props["cordoned"]["type"] == "boolean"
    assert re.fullmatch(props["uuid"]["pattern"], "5d3c0b1e-8f0a-4c7e-9f51-0e6b2b8d7a11")
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Pools"] == {**columns["Pools"], "jsonPath": ".devices[*].name", "priority": 1}
    assert columns["Age"]["type"] == "date"


# ------------------------------------------------------------------------------------------ CSIDriver


def test_csidriver() -> None:
    driver = _one("CSIDriver", DRIVER)
    assert driver["apiVersion"] == "storage.k8s.io/v1"
    assert driver["spec"] == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "storageCapacity": True,
        "volumeLifecycleModes": ["Persistent"],
        "fsGroupPolicy": "File",
    }


# ----------------------------------------------------------------------------------------------- RBAC

CONTROLLER_SA = "openebs-device-controller-sa"
NODE_SA = "openebs-device-node-sa"


def test_rbac_has_no_wildcards() -> None:
    for obj in _all_objects():
        if obj["kind"] in {"Role", "ClusterRole"}:
            for rule in obj["rules"]:
                for key in ("verbs", "resources", "apiGroups"):
                    assert "*" not in rule.get(key, []), (obj["metadata"]["name"], rule)
                assert "nonResourceURLs" not in rule


def test_every_role_is_bound_to_its_service_account() -> None:
    bindings = [o for o in _all_objects() if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    bound = {(b["roleRef"]["kind"], b["roleRef"]["name"]): b["subjects"] for b in bindings}
    expected = {
        ("Role", "openebs-device-controller"): CONTROLLER_SA,
        ("ClusterRole", "openebs-device-controller"): CONTROLLER_SA,
        ("Role", "openebs-device-node"): NODE_SA,
        ("ClusterRole", "openebs-device-node"): NODE_SA,
    }
    assert set(bound) == set(expected)
    for ref, sa in expected.items():
        assert bound[ref] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}], ref
    for sa in (CONTROLLER_SA, NODE_SA):
        assert _one("ServiceAccount", sa)


def test_custom_resources_are_granted_only_in_the_namespace() -> None:
    for obj in _all_objects():
        if obj["kind"] == "ClusterRole":
            for rule in obj["rules"]:
                assert GROUP not in rule["apiGroups"], obj["metadata"]["name"]


def test_controller_permissions() -> None:
    role = _rules("Role", "openebs-device-controller")
    cluster = _rules("ClusterRole", "openebs-device-controller")
    # patch: ControllerExpandVolume raises spec.capacity.
    assert _grants(role, GROUP, "devicevolumes") == {"get", "list", "watch", "create", "delete", "patch"}
    assert _grants(role, GROUP, "devicevolumes/status") == {"get"}
    assert _grants(role, GROUP, "devicenodes") == {"get", "list", "watch"}
    # get/create/update: leader election; list/watch: the agents' heartbeats.
    assert _grants(role, "coordination.k8s.io", "leases") == {"get", "create", "update", "list", "watch"}
    assert _grants(role, "storage.k8s.io", "csistoragecapacities") == {
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
    }
    assert _grants(role, "", "pods") == {"get"}
    assert _grants(role, "apps", "replicasets") == {"get"}
    assert {"create", "patch"} <= _grants(role, "", "events")
    # csi-provisioner
    assert _grants(cluster, "", "persistentvolumes") == {"get", "list", "watch", "create", "delete", "patch"}
    assert _grants(cluster, "", "persistentvolumeclaims") == {"get", "list", "watch", "update"}
    assert _grants(cluster, "", "persistentvolumeclaims/status") == {"patch"}
    assert _grants(cluster, "storage.k8s.io", "storageclasses") == {"get", "list", "watch"}
    assert _grants(cluster, "", "events") == {"list", "watch", "create", "update", "patch"}
    assert _grants(cluster, "storage.k8s.io", "csinodes") == {"get", "list", "watch"}
    assert _grants(cluster, "", "nodes") == {"get", "list", "watch"}
    assert _grants(cluster, "storage.k8s.io", "volumeattachments") == {"get", "list", "watch"}
    assert not _grants(cluster, "", "secrets")


def test_resizer_permissions() -> None:
    """What csi-resizer reads and writes: a grown claim's PV (spec.capacity), the claim's status, Events, and its
    Lease. With --handle-volume-inuse-error=false it reads no Pods, and without ControllerModifyVolume no
    VolumeAttributesClasses: neither is granted cluster-wide."""
    role = _rules("Role", "openebs-device-controller")
    cluster = _rules("ClusterRole", "openebs-device-controller")
    assert {"get", "list", "watch", "patch"} <= _grants(cluster, "", "persistentvolumes")
    assert {"get", "list", "watch"} <= _grants(cluster, "", "persistentvolumeclaims")
    assert "patch" in _grants(cluster, "", "persistentvolumeclaims/status")
    assert {"create", "patch"} <= _grants(cluster, "", "events")
    assert {"get", "create", "update"} <= _grants(role, "coordination.k8s.io", "leases")
    assert not _grants(cluster, "", "pods")
    assert not _grants(cluster, "storage.k8s.io", "volumeattributesclasses")


def test_snapshotter_permissions() -> None:
    """csi-snapshotter reads VolumeSnapshotClasses and writes VolumeSnapshotContents and their status;
    csi-provisioner reads VolumeSnapshots and their contents to restore a claim; the driver manages DeviceSnapshots
    and the agents copy them. Nobody may create or delete VolumeSnapshots (the snapshot-controller's job)."""
    cluster = _rules("ClusterRole", "openebs-device-controller")
    snap = "snapshot.storage.k8s.io"
    assert _grants(cluster, snap, "volumesnapshotclasses") == {"get", "list", "watch"}
    assert _grants(cluster, snap, "volumesnapshots") == {"get", "list", "watch"}
    assert _grants(cluster, snap, "volumesnapshotcontents") == {"get", "list", "watch", "update", "patch"}
    assert _grants(cluster, snap, "volumesnapshotcontents/status") == {"update", "patch"}
    role = _rules("Role", "openebs-device-controller")
    assert _grants(role, GROUP, "devicesnapshots") == {"get", "list", "watch", "create", "delete", "patch"}
    agent = _rules("Role", "openebs-device-node")
    assert _grants(agent, GROUP, "devicesnapshots") == {"get", "list", "watch", "patch"}
    assert _grants(agent, GROUP, "devicesnapshots/status") == {"get", "patch"}


def test_agent_permissions() -> None:
    role = _rules("Role", "openebs-device-node")
    cluster = _rules("ClusterRole", "openebs-device-node")
    volumes = _grants(role, GROUP, "devicevolumes")
    assert volumes == {"get", "list", "watch", "update", "patch"}
    assert not volumes & {"create", "delete", "deletecollection"}
    assert _grants(role, GROUP, "devicevolumes/status") == {"get", "update", "patch"}
    assert _grants(role, GROUP, "devicenodes") == {"get", "list", "watch", "create", "update", "patch"}
    assert _grants(role, "", "events") == {"create", "patch"}
    assert _grants(role, "coordination.k8s.io", "leases") == {"get", "create", "patch"}  # its heartbeat
    assert cluster == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]


# ---------------------------------------------------------------------------------------- workloads


def test_controller_deployment() -> None:
    deployment = _one("Deployment", "openebs-device-controller")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == CONTROLLER_SA
    containers = _containers(deployment)
    assert set(containers) == {"csi-provisioner", "csi-resizer", "csi-snapshotter", "device-driver"}
    provisioner = containers["csi-provisioner"]
    assert provisioner["image"] == "registry.k8s.io/sig-storage/csi-provisioner:v6.3.0"
    args = provisioner["args"]
    for flag in (
        "--csi-address=$(ADDRESS)",
        "--strict-topology",
        "--extra-create-metadata",
        "--enable-capacity",
        "--capacity-ownerref-level=2",
        "--leader-election",
        "--leader-election-namespace=openebs",
        "--default-fstype=ext4",
        "--timeout=60s",
    ):
        assert flag in args, flag
    assert not [a for a in args if a.startswith("--feature-gates")]
    penv = _env(provisioner)
    assert penv["ADDRESS"]["value"] == "/var/lib/csi/sockets/pluginproxy/csi.sock"
    assert penv["NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert penv["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    resizer = containers["csi-resizer"]
    assert resizer["image"] == "registry.k8s.io/sig-storage/csi-resizer:v2.3.0"
    for flag in (
        "--csi-address=$(ADDRESS)",
        "--leader-election",
        "--leader-election-namespace=openebs",
        # ControllerExpandVolume waits for the agent as long as CreateVolume does.
        "--timeout=60s",
        # Online expansion: a claim in use grows without waiting for its Pods to stop.
        "--handle-volume-inuse-error=false",
    ):
        assert flag in resizer["args"], flag
    assert _env(resizer)["ADDRESS"]["value"] == penv["ADDRESS"]["value"]
    snapshotter = containers["csi-snapshotter"]
    assert snapshotter["image"] == "registry.k8s.io/sig-storage/csi-snapshotter:v8.7.0"
    for flag in (
        "--csi-address=$(ADDRESS)",
        "--leader-election",
        "--leader-election-namespace=openebs",
        "--timeout=120s",
    ):
        assert flag in snapshotter["args"], flag
    assert _env(snapshotter)["ADDRESS"]["value"] == penv["ADDRESS"]["value"]
    driver = containers["device-driver"]
    assert driver["image"] == "openebs/device-localpv:0.1.0"
    assert driver["args"] == ["controller"]
    denv = _env(driver)
    assert denv["CSI_ENDPOINT"]["value"] == "unix:///var/lib/csi/sockets/pluginproxy/csi.sock"
    assert denv["DEVICE_DRIVER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert denv["METRICS_ADDRESS"]["value"] == ":9502"
    for container in containers.values():
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc.get("privileged") is not True
        assert "resources" in container
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["socket-dir"].rstrip("/") == "/var/lib/csi/sockets/pluginproxy"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["socket-dir"]


def test_agent_daemonset() -> None:
    daemonset = _one("DaemonSet", "openebs-device-node")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NODE_SA
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in pod["tolerations"]
    containers = _containers(daemonset)
    # The agent registers itself with kubelet: no registrar sidecar.
    assert set(containers) == {"device-driver"}
    driver = containers["device-driver"]
    assert driver["image"] == "openebs/device-localpv:0.1.0"
    assert driver["args"] == ["agent"]
    assert driver["securityContext"]["privileged"] is True
    env = _env(driver)
    assert env["OPENEBS_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["CSI_ENDPOINT"]["value"] == "unix:///var/lib/kubelet/plugins/device-localpv/csi.sock"
    assert env["KUBELET_REGISTRATION_DIR"]["value"] == "/var/lib/kubelet/plugins_registry"
    assert driver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert env["DEVICE_DRIVER_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["METRICS_ADDRESS"]["value"] == ":9501"
    assert re.compile(env["IGNORE_BLOCK_DEVICES_REGEX"]["value"]).match("loop0")
    assert not re.compile(env["IGNORE_BLOCK_DEVICES_REGEX"]["value"]).match("nvme0n1")
    assert env["ALLOWED_TOPOLOGY_LABELS"]["value"] == ""

    volumes = {v["name"]: v["hostPath"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in driver["volumeMounts"]}
    host = {path: volumes[m["name"]]["path"] for path, m in mounts.items()}
    assert host == {
        "/var/lib/kubelet": "/var/lib/kubelet",
        "/dev": "/dev",
        "/sys": "/sys",
        "/run/udev": "/run/udev",
        "/run/device-localpv": "/run/device-localpv",
    }
    assert mounts["/var/lib/kubelet"]["mountPropagation"] == "Bidirectional"
    assert mounts["/run/udev"]["readOnly"] is True
    assert volumes[mounts["/run/device-localpv"]["name"]]["type"] == "DirectoryOrCreate"


def test_bidirectional_propagation_only_where_privileged() -> None:
    """Kubernetes rejects Bidirectional propagation in an unprivileged container."""
    for obj in _all_objects():
        if obj["kind"] in {"Deployment", "DaemonSet"}:
            for container in _containers(obj).values():
                for mount in container.get("volumeMounts", []):
                    if mount.get("mountPropagation") == "Bidirectional":
                        assert container["securityContext"]["privileged"] is True


def test_images_are_pinned() -> None:
    for obj in _all_objects():
        if obj["kind"] in {"Deployment", "DaemonSet"}:
            for container in _containers(obj).values():
                image = container["image"]
                assert re.search(r":v?[0-9]+\.[0-9]+\.[0-9]+$", image), image


# ---------------------------------------------------------------------------------------- classes


def test_storageclasses() -> None:
    classes = {o["metadata"]["name"]: o for o in _all_objects() if o["kind"] == "StorageClass"}
    assert set(classes) == {"openebs-device-ssd", "openebs-device-ssd-immediate"}
    for sc in classes.values():
        assert sc["provisioner"] == DRIVER
        assert sc["allowVolumeExpansion"] is True  # online, in place
        assert sc["reclaimPolicy"] == "Delete"
        assert sc["parameters"]["devname"] == "ssd"
        assert sc["parameters"]["csi.storage.k8s.io/fstype"] == "ext4"
        assert all(isinstance(v, str) for v in sc["parameters"].values())
    assert classes["openebs-device-ssd"]["volumeBindingMode"] == "WaitForFirstConsumer"
    assert classes["openebs-device-ssd"]["parameters"]["scheduler"] == "CapacityWeighted"
    assert classes["openebs-device-ssd-immediate"]["volumeBindingMode"] == "Immediate"
    assert classes["openebs-device-ssd-immediate"]["parameters"]["scheduler"] == "FreeCapacityWeighted"


# ---------------------------------------------------------------------------------------- kustomize


def _kustomized_files(directory: Path) -> set[Path]:
    """Files a kustomization pulls in, following directory references."""
    (kustomization,) = _docs(directory / "kustomization.yaml")
    files: set[Path] = set()
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        assert target.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        files |= _kustomized_files(target) if target.is_dir() else {target}
    return files


def test_kustomization_lists_every_manifest() -> None:
    expected = {p.resolve() for p in _manifest_files() if p.name != "kustomization.yaml"}
    assert _kustomized_files(DEPLOY) == expected


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    kinds = [d["kind"] for d in yaml.safe_load_all(out) if d]
    assert len(kinds) == len(_all_objects())


# ------------------------------------------------------------------------------------------- image


def test_dockerfile_builds_one_image_for_both_roles() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(froms) == 2
    # A public default base for users; the local build (hack/image.sh) passes a Debian-made one.
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in text
    assert "COPY --from=protos csi.proto pluginregistration.proto" in text
    assert "hack/gen-proto.sh" in text
    assert re.search(r"^ENTRYPOINT \[\"device-localpv\"\]$", text, flags=re.MULTILINE)
    assert "--no-install-recommends" in text
    assert "rm -rf /var/lib/apt/lists/*" in text
    for package in ("parted", "util-linux", "fdisk", "e2fsprogs", "xfsprogs", "btrfs-progs", "udev"):
        assert re.search(rf"[\s\"]{re.escape(package)}(\s|\"|$)", text), package


def test_dockerignore_keeps_the_context_small() -> None:
    """An allowlist: everything is excluded, then exactly what the Dockerfile reads is let back in."""
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "hack/gen-proto.sh", "csidriver", "scheduler"}
    assert {"csidriver/csi", "csidriver/pluginregistration", "**/__pycache__"} <= set(lines)

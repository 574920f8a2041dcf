"""The Helm chart deploy/helm/device-localpv against the kustomize manifests of deploy/.

With default values the chart must render exactly the objects of `kubectl kustomize deploy/` minus the Namespace
(the chart adds no helm-only labels, so the comparison is strict). Every other test renders non-default values and
checks that the rendering changed where it should and nowhere else: the expected objects are derived from the default
rendering.

helm and kubectl come from hack/tools.sh (the CI builds them through hack/setup.sh); a missing binary fails the
test with the command that builds it, it never skips.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from csidriver.config import Role, Settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "device-localpv"
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "crds"
RELEASE = "device-localpv"
NAMESPACE = "openebs"
KUBELET = "/var/lib/kubelet"

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace ("" when cluster-scoped), name
Objects = dict[Key, Obj]

CONTROLLER: Key = ("apps/v1", "Deployment", NAMESPACE, "openebs-device-controller")
AGENT: Key = ("apps/v1", "DaemonSet", NAMESPACE, "openebs-device-node")
NAMESPACE_KEY: Key = ("v1", "Namespace", "", NAMESPACE)


# ------------------------------------------------------------------------------------------------ tools


@functools.cache
def _tool_env() -> dict[str, str]:
    out = subprocess.run(
        [str(ROOT / "hack" / "tools.sh"), "env"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _executable(path: str, build: str) -> str:
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: build it with `hack/tools.sh {build}` (hack/setup.sh builds every tool)")
    return path


@pytest.fixture(scope="module")
def helm() -> str:
    return _executable(_tool_env()["HELM_BIN"], "helm")


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _executable(os.path.join(_tool_env()["KUBE_BIN_DIR"], "kubectl"), "kube")


def _run(cmd: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _check(cmd: list[str], stdin: str = "") -> str:
    proc = _run(cmd, stdin)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
    return proc.stdout


# ------------------------------------------------------------------------------------------------ rendering


def _parse(stream: str, source: str) -> Objects:
    objects: Objects = {}
    for doc in yaml.safe_load_all(stream):
        if doc is None:
            continue
        meta = doc["metadata"]
        key = (doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"])
        assert key not in objects, f"{source} renders {key} twice"
        objects[key] = doc
    return objects


def _template_cmd(helm: str, *extra: str) -> list[str]:
    return [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds", *extra]


def _render(helm: str, values: Obj | None = None) -> Objects:
    """helm template with the given values (passed as a values file on stdin, so nested lists work)."""
    if values is None:
        return _parse(_check(_template_cmd(helm)), "helm template")
    return _parse(_check(_template_cmd(helm, "--values", "-"), yaml.safe_dump(values)), "helm template")


def _render_error(helm: str, values: Obj) -> str:
    proc = _run(_template_cmd(helm, "--values", "-"), yaml.safe_dump(values))
    assert proc.returncode != 0, f"helm template accepted {values}"
    return proc.stderr


@pytest.fixture(scope="module")
def default(helm: str) -> Objects:
    return _render(helm)


@pytest.fixture(scope="module")
def kustomize(kubectl: str) -> Objects:
    return _parse(_check([kubectl, "kustomize", str(DEPLOY)]), "kubectl kustomize")


def _expect(default: Objects, change: Callable[[Objects], None]) -> Objects:
    expected = copy.deepcopy(default)
    change(expected)
    return expected


# ------------------------------------------------------------------------------------------------ differences


def _named(items: list[Any]) -> dict[str, Any] | None:
    """A list of uniquely named dicts (containers, env, volumes, ports) as a dict by name, else None."""
    if not items or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        return None
    names = [i["name"] for i in items]
    return dict(zip(names, items, strict=True)) if len(set(names)) == len(names) else None


def _diff(want: Any, got: Any, path: str) -> Iterator[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        for k in sorted(want.keys() | got.keys(), key=str):
            if k not in got:
                yield f"{path}.{k}: missing (want {want[k]!r})"
            elif k not in want:
                yield f"{path}.{k}: unexpected {got[k]!r}"
            else:
                yield from _diff(want[k], got[k], f"{path}.{k}")
        return
    if isinstance(want, list) and isinstance(got, list):
        by_name_want, by_name_got = _named(want), _named(got)
        if by_name_want is not None and by_name_got is not None:
            for name in [*by_name_want, *(n for n in by_name_got if n not in by_name_want)]:
                if name not in by_name_got:
                    yield f"{path}[{name}]: missing (want {by_name_want[name]!r})"
                elif name not in by_name_want:
                    yield f"{path}[{name}]: unexpected {by_name_got[name]!r}"
                else:
                    yield from _diff(by_name_want[name], by_name_got[name], f"{path}[{name}]")
            if by_name_want.keys() == by_name_got.keys() and list(by_name_want) != list(by_name_got):
                yield f"{path}: order {list(by_name_got)}, want {list(by_name_want)}"
            return
        for i in range(max(len(want), len(got))):
            if i >= len(got):
                yield f"{path}[{i}]: missing (want {want[i]!r})"
            elif i >= len(want):
                yield f"{path}[{i}]: unexpected {got[i]!r}"
            else:
                yield from _diff(want[i], got[i], f"{path}[{i}]")
        return
    if want != got or type(want) is not type(got):
        yield f"{path}: {got!r} ({type(got).__name__}), want {want!r} ({type(want).__name__})"


def _differences(want: Objects, got: Objects, want_name: str, got_name: str) -> list[str]:
    lines: list[str] = []
    for key in sorted(want.keys() - got.keys()):
        lines.append(f"{key}: in {want_name}, not in {got_name}")
    for key in sorted(got.keys() - want.keys()):
        lines.append(f"{key}: in {got_name}, not in {want_name}")
    for key in sorted(want.keys() & got.keys()):
        lines.extend(f"{key[1]} {key[2]}/{key[3]}: {d}" for d in _diff(want[key], got[key], ""))
    return lines


def _assert_same(want: Objects, got: Objects, want_name: str = "expected", got_name: str = "helm") -> None:
    problems = _differences(want, got, want_name, got_name)
    assert not problems, f"{len(problems)} difference(s) ({want_name} vs {got_name}):\n" + "\n".join(problems)


# ------------------------------------------------------------------------------------------------ helpers


def _pod(objects: Objects, key: Key) -> Obj:
    spec: Obj = objects[key]["spec"]["template"]["spec"]
    return spec


def _container(objects: Objects, key: Key, name: str) -> Obj:
    found: list[Obj] = [c for c in _pod(objects, key)["containers"] if c["name"] == name]
    assert len(found) == 1, f"{key} has {len(found)} containers named {name}"
    return found[0]


def _driver(objects: Objects, key: Key) -> Obj:
    return _container(objects, key, "device-driver")


def _provisioner(objects: Objects) -> Obj:
    return _container(objects, CONTROLLER, "csi-provisioner")


def _resizer(objects: Objects) -> Obj:
    return _container(objects, CONTROLLER, "csi-resizer")


def _snapshotter(objects: Objects) -> Obj:
    return _container(objects, CONTROLLER, "csi-snapshotter")


def _sidecars(objects: Objects) -> tuple[Obj, ...]:
    """The controller's sidecars that elect a leader."""
    return _provisioner(objects), _resizer(objects), _snapshotter(objects)


def _env(container: Obj) -> dict[str, str]:
    """The plain (value, not valueFrom) environment variables of a container."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _settings(container: Obj, role: Role) -> Settings:
    """What the driver makes of a rendered container's environment (csidriver/config.py)."""
    environ = {"OPENEBS_NODE_ID": "node-a", "POD_NAME": "pod-a", **_env(container)}
    return parse_settings([role.value], environ)


def _add_env(container: Obj, name: str, value: str) -> None:
    container["env"].append({"name": name, "value": value})


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _replace_strings(node: Any, old: str, new: str) -> Any:
    if isinstance(node, dict):
        return {k: _replace_strings(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_strings(v, old, new) for v in node]
    if isinstance(node, str):
        return node.replace(old, new)
    return node


def _storage_classes(objects: Objects) -> Objects:
    return {k: v for k, v in objects.items() if k[1] == "StorageClass"}


# ------------------------------------------------------------------------------------------------ chart files


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
def test_helm_lint(helm: str, strict: bool) -> None:
    _check([helm, "lint", str(CHART), *(["--strict"] if strict else [])])


def _kustomize_resources(directory: Path) -> list[str]:
    with (directory / "kustomization.yaml").open(encoding="utf-8") as f:
        resources: list[str] = yaml.safe_load(f)["resources"]
    return resources


def test_chart_crds_are_byte_identical_to_repo_crds() -> None:
    """The chart's crds/ are plain copies (Helm warns about symlinks, and Git-based deployers such as Argo CD or
    Flux refuse symlinks leaving the chart): this test keeps them from drifting from crds/."""
    fix = f"cp {' '.join(f'crds/{n}' for n in _kustomize_resources(CRDS))} {(CHART / 'crds').relative_to(ROOT)}/"
    repo = {name: (CRDS / name).read_bytes() for name in _kustomize_resources(CRDS)}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert sorted(chart) == sorted(repo), f"chart crds/ has {sorted(chart)}, crds/ lists {sorted(repo)}; run: {fix}"
    stale = [name for name in repo if chart[name] != repo[name]]
    assert not stale, f"chart copies differ from crds/: {stale}; run: {fix}"


def test_crds_only_come_from_crds_dir(helm: str) -> None:
    """CRDs sit in the chart's crds/ (installed once, before the templates, never upgraded), not in templates/."""
    with_crds = _render(helm)
    without = _parse(_check([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]), "helm template")
    crds = {k for k in with_crds if k[1] == "CustomResourceDefinition"}
    assert {k[3] for k in crds} == {
        "devicevolumes.local.openebs.io",
        "devicenodes.local.openebs.io",
        "devicesnapshots.local.openebs.io",
    }
    assert without.keys() == with_crds.keys() - crds


def test_values_match_driver_defaults() -> None:
    """The templates leave an env var out when its value is the driver's default: those defaults are these."""
    with (CHART / "values.yaml").open(encoding="utf-8") as f:
        values = yaml.safe_load(f)
    controller = parse_settings(["controller"], {})
    agent = parse_settings(["agent"], {"OPENEBS_NODE_ID": "node-a"})
    assert values["leaderElection"] == {"enabled": controller.leader_election, "leaseSeconds": controller.lease_seconds}
    assert values["deletionBrake"] == {
        "maxDeletions": agent.max_deletions,
        "windowSeconds": agent.deletion_window_seconds,
    }
    assert values["includeDevicesRegex"] == (agent.include_devices_regex or "")


# ------------------------------------------------------------------------------------------------ default values


def test_default_values_render_what_kustomize_renders(kustomize: Objects, default: Objects) -> None:
    """Default values render the objects of deploy/ minus exactly the Namespace, the one deliberate difference.

    namespace.create defaults to false: `helm install ... -n openebs --create-namespace` creates the namespace (a
    Namespace in the chart would then fail the install: it exists and is not part of the release), and a Namespace
    in the release would be deleted by `helm uninstall` with every DeviceVolume and DeviceNode in it.
    """
    assert NAMESPACE_KEY in kustomize, "deploy/ no longer renders the Namespace: update this test and docs/helm.md"
    assert NAMESPACE_KEY not in default, "the default helm rendering must not own the Namespace"
    without_namespace = {k: v for k, v in kustomize.items() if k != NAMESPACE_KEY}
    _assert_same(without_namespace, default, "kubectl kustomize deploy/ minus the Namespace", "helm template")


def test_namespace_created_on_request(helm: str, kustomize: Objects, default: Objects) -> None:
    """namespace.create=true adds the Namespace, equal to deploy/'s, and nothing else: then helm == kustomize."""
    got = _render(helm, {"namespace": {"create": True}})
    assert NAMESPACE_KEY in got, "namespace.create=true does not render the Namespace"
    _assert_same({NAMESPACE_KEY: kustomize[NAMESPACE_KEY]}, {NAMESPACE_KEY: got[NAMESPACE_KEY]}, "kustomize")
    _assert_same({**default, NAMESPACE_KEY: kustomize[NAMESPACE_KEY]}, got)
    _assert_same(kustomize, got, "kubectl kustomize deploy/", "helm template --set namespace.create=true")


def test_default_values_set_explicitly_change_nothing(helm: str, default: Objects) -> None:
    """Driver defaults given explicitly still render no extra env var (deploy/ sets none of them)."""
    values: Obj = {
        "leaderElection": {"enabled": True, "leaseSeconds": 15},
        "deletionBrake": {"maxDeletions": 120, "windowSeconds": 60},
        "includeDevicesRegex": "",
        "kubeletDir": KUBELET + "/",
        "image": {"tag": "0.1.0"},
        "namespace": {"name": NAMESPACE, "create": False},
    }
    _assert_same(default, _render(helm, values))


# ------------------------------------------------------------------------------------------------ other values


def test_metrics_disabled_removes_env_ports_and_probes(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        for key in (CONTROLLER, AGENT):
            driver = _driver(objects, key)
            driver["env"] = [e for e in driver["env"] if e["name"] != "METRICS_ADDRESS"]
            del driver["ports"], driver["livenessProbe"]

    got = _render(helm, {"metrics": {"enabled": False}})
    _assert_same(_expect(default, change), got)
    for key in (CONTROLLER, AGENT):
        assert (
            _settings(_driver(got, key), Role.CONTROLLER if key == CONTROLLER else Role.AGENT).metrics_address is None
        )
        for c in _pod(got, key)["containers"]:
            assert not {"ports", "livenessProbe", "readinessProbe"} & c.keys(), c["name"]


def test_metrics_ports(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        for key, port in ((CONTROLLER, 9602), (AGENT, 9601)):
            driver = _driver(objects, key)
            next(e for e in driver["env"] if e["name"] == "METRICS_ADDRESS")["value"] = f":{port}"
            driver["ports"][0]["containerPort"] = port

    got = _render(helm, {"metrics": {"agentPort": 9601, "controllerPort": 9602}})
    _assert_same(_expect(default, change), got)
    # The probes follow the port by its name.
    for key in (CONTROLLER, AGENT):
        driver = _driver(got, key)
        assert driver["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert driver["ports"][0]["name"] == "metrics"


def test_custom_storage_classes(helm: str, default: Objects) -> None:
    classes: list[Obj] = [
        {
            "name": "nvme-xfs",
            "pool": "nvme",
            "scheduler": "VolumeWeighted",
            "fsType": "xfs",
            "volumeBindingMode": "Immediate",
            "reclaimPolicy": "Retain",
            "allowedTopologies": [
                {"matchLabelExpressions": [{"key": "openebs.io/nodename", "values": ["node-a", "node-b"]}]}
            ],
            "labels": {"tier": "fast"},
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        # Only the required fields; a numeric-looking pool stays a string.
        {"name": "minimal", "pool": "1234"},
        {"name": "fixed-size", "pool": "ssd", "allowVolumeExpansion": False},
    ]
    got = _render(helm, {"storageClasses": classes})
    want = {
        ("storage.k8s.io/v1", "StorageClass", "", "nvme-xfs"): {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {
                "name": "nvme-xfs",
                "labels": {"app.kubernetes.io/name": "device-localpv", "tier": "fast"},
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
            },
            "provisioner": "device.csi.openebs.io",
            "parameters": {"devname": "nvme", "scheduler": "VolumeWeighted", "csi.storage.k8s.io/fstype": "xfs"},
            "reclaimPolicy": "Retain",
            "allowVolumeExpansion": True,
            "volumeBindingMode": "Immediate",
            "allowedTopologies": classes[0]["allowedTopologies"],
        },
        ("storage.k8s.io/v1", "StorageClass", "", "minimal"): {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "minimal", "labels": {"app.kubernetes.io/name": "device-localpv"}},
            "provisioner": "device.csi.openebs.io",
            "parameters": {"devname": "1234"},
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": True,
            "volumeBindingMode": "WaitForFirstConsumer",
        },
        ("storage.k8s.io/v1", "StorageClass", "", "fixed-size"): {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "fixed-size", "labels": {"app.kubernetes.io/name": "device-localpv"}},
            "provisioner": "device.csi.openebs.io",
            "parameters": {"devname": "ssd"},
            "reclaimPolicy": "Delete",
            "allowVolumeExpansion": False,
            "volumeBindingMode": "WaitForFirstConsumer",
        },
    }
    _assert_same(want, _storage_classes(got))
    others = {k: v for k, v in default.items() if k[1] != "StorageClass"}
    _assert_same(others, {k: v for k, v in got.items() if k[1] != "StorageClass"})

    none = _render(helm, {"storageClasses": []})
    assert not _storage_classes(none)


@pytest.mark.parametrize(
    ("storage_class", "complaint"),
    [
        ({"name": "x", "pool": "ssd", "scheduler": "Fastest"}, "scheduler"),
        ({"name": "x", "pool": "has space"}, "pool"),
        ({"name": "x"}, "pool"),
        ({"name": "x", "pool": "ssd", "fsType": "ntfs"}, "fsType"),
        ({"name": "x", "pool": "ssd", "volumeBindingMode": "Later"}, "volumeBindingMode"),
        ({"name": "x", "pool": "ssd", "allowVolumeExpansion": "yes"}, "allowVolumeExpansion"),
        ({"name": "x", "pool": "ssd", "expansion": True}, "expansion"),
    ],
)
def test_invalid_storage_class_is_refused(helm: str, storage_class: Obj, complaint: str) -> None:
    assert complaint in _render_error(helm, {"storageClasses": [storage_class]})


@pytest.mark.parametrize("kubelet_dir", ["/data/kubelet", "/data/kubelet/"])
def test_kubelet_dir_moves_every_kubelet_path(helm: str, default: Objects, kubelet_dir: str) -> None:
    got = _render(helm, {"kubeletDir": kubelet_dir})
    leftovers = [(k, s) for k, obj in got.items() for s in _strings(obj) if KUBELET in s]
    assert not leftovers, f"{KUBELET} still rendered: {leftovers}"
    want = {k: _replace_strings(v, KUBELET, "/data/kubelet") for k, v in default.items()}
    _assert_same(want, got)
    agent = _driver(got, AGENT)
    assert _settings(agent, Role.AGENT).endpoint == "unix:///data/kubelet/plugins/device-localpv/csi.sock"
    assert _env(agent)["KUBELET_REGISTRATION_DIR"] == "/data/kubelet/plugins_registry"
    assert agent["volumeMounts"][0] == {
        "name": "kubelet-dir",
        "mountPath": "/data/kubelet",
        "mountPropagation": "Bidirectional",
    }
    assert _pod(got, AGENT)["volumes"][0]["hostPath"] == {"path": "/data/kubelet", "type": "Directory"}


@pytest.mark.parametrize("kubelet_dir", ["relative/kubelet", "/"])
def test_kubelet_dir_must_be_absolute(helm: str, kubelet_dir: str) -> None:
    assert "kubeletDir" in _render_error(helm, {"kubeletDir": kubelet_dir})


def test_allowed_topology_labels_are_comma_joined(helm: str, default: Objects) -> None:
    labels = ["topology.kubernetes.io/zone", "example.com/rack"]

    def change(objects: Objects) -> None:
        env = _driver(objects, AGENT)["env"]
        next(e for e in env if e["name"] == "ALLOWED_TOPOLOGY_LABELS")["value"] = ",".join(labels)

    got = _render(helm, {"allowedTopologyLabels": labels})
    _assert_same(_expect(default, change), got)
    assert _settings(_driver(got, AGENT), Role.AGENT).topology_labels == tuple(sorted(labels))


def test_deletion_brake(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        _add_env(_driver(objects, AGENT), "MAX_DELETIONS", "10")
        _add_env(_driver(objects, AGENT), "DELETION_WINDOW_SECONDS", "30")

    got = _render(helm, {"deletionBrake": {"maxDeletions": 10, "windowSeconds": 30}})
    _assert_same(_expect(default, change), got)
    settings = _settings(_driver(got, AGENT), Role.AGENT)
    assert (settings.max_deletions, settings.deletion_window_seconds) == (10, 30)

    # 0 turns the brake off; it differs from the default, so it is rendered.
    off = _render(helm, {"deletionBrake": {"maxDeletions": 0}})
    assert _env(_driver(off, AGENT))["MAX_DELETIONS"] == "0"
    assert "DELETION_WINDOW_SECONDS" not in _env(_driver(off, AGENT))


def test_device_regexes(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        env = _driver(objects, AGENT)["env"]
        next(e for e in env if e["name"] == "IGNORE_BLOCK_DEVICES_REGEX")["value"] = "^(loop|nbd)"
        _add_env(_driver(objects, AGENT), "DEVICE_INCLUDE_REGEX", "^(sd|nvme)")

    got = _render(helm, {"ignoreDevicesRegex": "^(loop|nbd)", "includeDevicesRegex": "^(sd|nvme)"})
    _assert_same(_expect(default, change), got)
    settings = _settings(_driver(got, AGENT), Role.AGENT)
    assert (settings.ignore_devices_regex, settings.include_devices_regex) == ("^(loop|nbd)", "^(sd|nvme)")


def test_lease_seconds(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        _add_env(_driver(objects, CONTROLLER), "LEASE_SECONDS", "30")
        for sidecar in _sidecars(objects):
            args = sidecar["args"]
            at = args.index(f"--leader-election-namespace={NAMESPACE}") + 1
            args[at:at] = [
                "--leader-election-lease-duration=30s",
                "--leader-election-renew-deadline=20s",
                "--leader-election-retry-period=10s",
            ]

    got = _render(helm, {"leaderElection": {"leaseSeconds": 30}})
    _assert_same(_expect(default, change), got)
    assert _settings(_driver(got, CONTROLLER), Role.CONTROLLER).lease_seconds == 30


def test_leader_election_disabled(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        objects[CONTROLLER]["spec"]["replicas"] = 1
        _add_env(_driver(objects, CONTROLLER), "LEADER_ELECTION", "false")
        for sidecar in _sidecars(objects):
            sidecar["args"].remove("--leader-election")
            sidecar["args"].remove(f"--leader-election-namespace={NAMESPACE}")

    values: Obj = {"controller": {"replicas": 1}, "leaderElection": {"enabled": False, "leaseSeconds": 30}}
    got = _render(helm, values)
    _assert_same(_expect(default, change), got)
    assert _settings(_driver(got, CONTROLLER), Role.CONTROLLER).leader_election is False
    for sidecar in _sidecars(got):
        assert not [a for a in sidecar["args"] if a.startswith("--leader-election")]

    # Two replicas without a leader would both provision every claim.
    assert "controller.replicas" in _render_error(helm, {"leaderElection": {"enabled": False}})
    assert "leaseSeconds" in _render_error(helm, {"leaderElection": {"leaseSeconds": 2}})


def test_images(helm: str, default: Objects) -> None:
    def change(objects: Objects) -> None:
        for key in (CONTROLLER, AGENT):
            _driver(objects, key).update(image="registry.example.com/device-localpv:dev", imagePullPolicy="Always")
            _pod(objects, key)["imagePullSecrets"] = [{"name": "regcred"}]
        _provisioner(objects).update(image="mirror.example.com/csi-provisioner:v9", imagePullPolicy="Never")
        _resizer(objects).update(image="mirror.example.com/csi-resizer:v8", imagePullPolicy="Always")
        _snapshotter(objects).update(image="mirror.example.com/csi-snapshotter:v9", imagePullPolicy="Always")

    values: Obj = {
        "image": {"repository": "registry.example.com/device-localpv", "tag": "dev", "pullPolicy": "Always"},
        "csiProvisioner": {
            "image": {"repository": "mirror.example.com/csi-provisioner", "tag": "v9", "pullPolicy": "Never"}
        },
        "csiResizer": {"image": {"repository": "mirror.example.com/csi-resizer", "tag": "v8", "pullPolicy": "Always"}},
        "csiSnapshotter": {
            "image": {"repository": "mirror.example.com/csi-snapshotter", "tag": "v9", "pullPolicy": "Always"}
        },
        "imagePullSecrets": [{"name": "regcred"}],
    }
    _assert_same(_expect(default, change), _render(helm, values))


def test_driver_tag_defaults_to_app_version(helm: str, default: Objects) -> None:
    with (CHART / "Chart.yaml").open(encoding="utf-8") as f:
        app_version = yaml.safe_load(f)["appVersion"]
    for key in (CONTROLLER, AGENT):
        assert _driver(default, key)["image"] == f"openebs/device-localpv:{app_version}"


def _provisioner_in(objects: Objects, namespace: str) -> Obj:
    return _container(objects, (CONTROLLER[0], CONTROLLER[1], namespace, CONTROLLER[3]), "csi-provisioner")


def _move_namespace(objects: Objects, namespace: str) -> Objects:
    """The default objects as they should be in another namespace."""
    moved: Objects = {}
    for (api, kind, ns, name), original in objects.items():
        obj = copy.deepcopy(original)
        if kind == "Namespace":
            obj["metadata"]["name"] = name = namespace
        if ns:
            obj["metadata"]["namespace"] = ns = namespace
        for subject in obj.get("subjects", []):
            subject["namespace"] = namespace
        moved[(api, kind, ns, name)] = obj
    key = (CONTROLLER[0], CONTROLLER[1], namespace, CONTROLLER[3])
    for sidecar in ("csi-provisioner", "csi-resizer", "csi-snapshotter"):
        args = _container(moved, key, sidecar)["args"]
        args[args.index(f"--leader-election-namespace={NAMESPACE}")] = f"--leader-election-namespace={namespace}"
    return moved


def test_namespace(helm: str, default: Objects, kustomize: Objects) -> None:
    got = _render(helm, {"namespace": {"name": "storage"}})
    _assert_same(_move_namespace(default, "storage"), got)
    assert "--leader-election-namespace=storage" in _provisioner_in(got, "storage")["args"]
    key = (CONTROLLER[0], CONTROLLER[1], "storage", CONTROLLER[3])
    assert "--leader-election-namespace=storage" in _container(got, key, "csi-resizer")["args"]

    # The Namespace, when rendered, follows namespace.name.
    created = _render(helm, {"namespace": {"name": "storage", "create": True}})
    _assert_same(_move_namespace({**default, NAMESPACE_KEY: kustomize[NAMESPACE_KEY]}, "storage"), created)

    # Empty name: the release namespace, for the objects and for the Namespace when rendered.
    for create in (False, True):
        set_values = ["--set", "namespace.name=", "--set", f"namespace.create={str(create).lower()}"]
        cmd = [helm, "template", RELEASE, str(CHART), "--namespace", "infra", *set_values]
        release_ns = _parse(_check(cmd), "helm template")
        assert {k[2] for k in release_ns if k[2]} == {"infra"}
        namespaces = [k for k in release_ns if k[1] == "Namespace"]
        assert namespaces == ([("v1", "Namespace", "", "infra")] if create else []), f"create={create}: {namespaces}"


def test_placement_and_resources(helm: str, default: Objects) -> None:
    node_selector = {"kubernetes.io/os": "linux", "storage": "yes"}
    tolerations = [{"key": "dedicated", "operator": "Equal", "value": "storage", "effect": "NoSchedule"}]
    resources: Obj = {"requests": {"cpu": "100m", "memory": "200Mi"}, "limits": {"memory": "2Gi"}}

    def change(objects: Objects) -> None:
        agent, controller = _pod(objects, AGENT), _pod(objects, CONTROLLER)
        agent.update(nodeSelector=node_selector, tolerations=tolerations, priorityClassName="storage-critical")
        _driver(objects, AGENT)["resources"] = resources
        controller.update(tolerations=tolerations)
        del controller["nodeSelector"], controller["priorityClassName"]
        objects[CONTROLLER]["spec"]["replicas"] = 3
        _driver(objects, CONTROLLER)["resources"] = resources
        del _provisioner(objects)["resources"]
        del _resizer(objects)["resources"]
        del _snapshotter(objects)["resources"]

    values: Obj = {
        "agent": {
            "nodeSelector": {"storage": "yes"},
            "tolerations": tolerations,
            "resources": resources,
            "priorityClassName": "storage-critical",
        },
        "controller": {
            "replicas": 3,
            "nodeSelector": None,
            "tolerations": tolerations,
            "resources": resources,
            "priorityClassName": "",
        },
        "csiProvisioner": {"resources": None},
        "csiResizer": {"resources": None},
        "csiSnapshotter": {"resources": None},
    }
    _assert_same(_expect(default, change), _render(helm, values))


def test_snapshot_class_only_when_asked(helm: str, default: Objects) -> None:
    """Off by default (it needs the snapshot CRDs); when asked, the class of deploy/optional/snapshotclass.yaml."""
    assert not [k for k in default if k[1] == "VolumeSnapshotClass"]
    got = _render(helm, {"snapshotClass": {"create": True}})
    [key] = [k for k in got if k[1] == "VolumeSnapshotClass"]
    with (DEPLOY / "optional" / "snapshotclass.yaml").open(encoding="utf-8") as f:
        assert got[key] == yaml.safe_load(f)
    retain = _render(helm, {"snapshotClass": {"create": True, "deletionPolicy": "Retain", "name": "keep"}})
    assert [o["deletionPolicy"] for k, o in retain.items() if k[1] == "VolumeSnapshotClass"] == ["Retain"]
    assert "deletionPolicy" in _render_error(helm, {"snapshotClass": {"create": True, "deletionPolicy": "Forever"}})

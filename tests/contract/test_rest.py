"""The driver's own REST client against a real kube-apiserver: selectors and pages, watches with bookmarks that
advance the resource version, 410 Gone (a watch from a version older than the watch cache) and the Informer's relist,
resourceVersion-guarded writes, the server's Status in errors, a rotating token file, a 401 answered by reading the
token again, an exec credential plugin, TLS verified against the server's CA, and connection reuse."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from csidriver.kube import http, wire
from csidriver.kube.client import ApiClient, ApiError, Decode, make_api_client, path
from csidriver.kube.informer import Informer
from harness.apiserver import ApiServer

pytestmark = pytest.mark.asyncio(loop_scope="session")
CONFIGMAPS = path("", "v1", "configmaps", "default")
EVENTS = path("", "v1", "events", "default")
REVIEW = path("authentication.k8s.io", "v1", "selfsubjectreviews")


@pytest.fixture
async def admin(api: ApiServer) -> AsyncIterator[ApiClient]:
    client = await make_api_client(api.identities["admin"].kubeconfig, 100, 200)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def run() -> str:
    """A label value no other test's objects carry."""
    return uuid.uuid4().hex[:12]


async def _configmap(client: ApiClient, name: str, labels: dict[str, str]) -> dict[str, Any]:
    body = {"metadata": {"name": name, "labels": labels}, "data": {"k": name}}
    return await client.create(CONFIGMAPS, body)


async def whoami(client: ApiClient) -> str:
    review = await client.create(REVIEW, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


def _kubeconfig(api: ApiServer, tmp: Path, user: dict[str, Any], cluster: dict[str, Any] | None = None) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster or {"server": api.url, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    out = tmp / "kubeconfig"
    out.write_text(json.dumps(cfg))
    return out


async def test_selectors_and_pages(admin: ApiClient, run: str) -> None:
    for i in range(5):
        await _configmap(admin, f"rest-{run}-{i}", {"rest-run": run, "parity": "even" if i % 2 == 0 else "odd"})
    before = admin.requests["get_or_list"]
    got = await admin.list_all(CONFIGMAPS, page=2, labelSelector=f"rest-run={run}")
    assert sorted(o["metadata"]["name"] for o in got["items"]) == [f"rest-{run}-{i}" for i in range(5)]
    assert admin.requests["get_or_list"] - before == 3, "5 objects in pages of 2 take 3 requests"
    even = await admin.list_all(CONFIGMAPS, labelSelector=f"rest-run={run},parity=even")
    assert sorted(o["metadata"]["name"] for o in even["items"]) == [f"rest-{run}-{i}" for i in (0, 2, 4)]
    one = await admin.list_all(CONFIGMAPS, labelSelector=f"rest-run={run}", fieldSelector=f"metadata.name=rest-{run}-3")
    assert [o["metadata"]["name"] for o in one["items"]] == [f"rest-{run}-3"]
    page = await admin.get(CONFIGMAPS, limit=2, labelSelector=f"rest-run={run}")
    assert len(page["items"]) == 2 and page["metadata"]["continue"]


async def test_guarded_writes_and_the_servers_status(admin: ApiClient, run: str) -> None:
    made = await _configmap(admin, f"rest-{run}", {"rest-run": run})
    target = path("", "v1", "configmaps", "default", f"rest-{run}")
    patched = await admin.patch(target, {"data": {"k": None, "m": "1"}})  # a merge patch: null removes the key
    assert patched["data"] == {"m": "1"}
    stale = {**made, "data": {"k": "stale"}}  # carries the version before the patch
    with pytest.raises(ApiError) as e:
        await admin.replace(target, stale)
    assert e.value.status == 409 and e.value.reason == "Conflict"
    assert "the object has been modified" in e.value.message
    with pytest.raises(ApiError) as e:
        await admin.create(CONFIGMAPS, {"metadata": {"name": f"rest-{run}"}})
    assert (e.value.status, e.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as e:
        await admin.create(CONFIGMAPS, {"metadata": {"name": "Not_A_Name"}})
    assert (e.value.status, e.value.reason) == (422, "Invalid") and "Not_A_Name" in e.value.message
    with pytest.raises(ApiError) as e:
        await admin.delete(target, {"preconditions": {"resourceVersion": made["metadata"]["resourceVersion"]}})
    assert e.value.status == 409, "a delete whose precondition no longer holds deletes nothing"
    await admin.delete(target, {"preconditions": {"resourceVersion": patched["metadata"]["resourceVersion"]}})
    with pytest.raises(ApiError) as e:
        await admin.get(target)
    assert e.value.status == 404 and e.value.reason == "NotFound" and f"rest-{run}" in e.value.message


async def test_watch_with_selectors_and_bookmarks_that_advance_the_version(admin: ApiClient, run: str) -> None:
    listed = await admin.list_all(CONFIGMAPS, labelSelector=f"rest-run={run}")
    start = int(listed["metadata"]["resourceVersion"])
    events: list[dict[str, Any]] = []

    async def watch() -> None:
        async with admin.watch(
            CONFIGMAPS,
            resourceVersion=str(start),
            allowWatchBookmarks=True,
            timeoutSeconds=6,
            labelSelector=f"rest-run={run}",
        ) as stream:
            async for event in stream:
                events.append(event)

    watching = asyncio.create_task(watch())
    await asyncio.sleep(0.5)
    ours = await _configmap(admin, f"rest-{run}-w", {"rest-run": run})
    other = await _configmap(admin, f"rest-{run}-other", {"rest-run": "someone-else"})
    await asyncio.wait_for(watching, 30)  # the server ends the watch at its timeout
    kinds = [e["type"] for e in events]
    assert kinds[0] == "ADDED" and events[0]["object"]["metadata"]["name"] == f"rest-{run}-w"
    assert all(e["object"]["metadata"].get("name") != f"rest-{run}-other" for e in events), "selector not applied"
    bookmarks = [int(e["object"]["metadata"]["resourceVersion"]) for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, f"no bookmark in {kinds}"
    assert bookmarks[-1] >= int(other["metadata"]["resourceVersion"]) > int(ours["metadata"]["resourceVersion"])


def _compact(api: ApiServer, revision: int) -> None:
    """Compacts etcd's history up to `revision`, as kube-apiserver itself does every few minutes."""
    etcd = next(a.split("=", 1)[1] for a in api._api_args if a.startswith("--etcd-servers="))
    body = json.dumps({"revision": revision}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{etcd}/v3/kv/compaction", data=body, method="POST")) as r:
        assert r.status == 200


async def _compact_after_a_write(api: ApiServer, client: ApiClient, run: str) -> None:
    """One more write, then compaction up to it: a watch from any version before the last two writes is 410."""
    pad = await _configmap(client, f"rest-{run}-pad", {})
    _compact(api, int(pad["metadata"]["resourceVersion"]))


async def _event(client: ApiClient, run: str, name: str) -> dict[str, Any]:
    """A core Event: the one kind kube-apiserver keeps no watch cache for, so its watches read etcd's history."""
    body = {
        "metadata": {"name": f"rest-{run}-{name}", "labels": {"rest-run": run}},
        "involvedObject": {"kind": "ConfigMap", "namespace": "default", "name": "x"},
        "reason": "Test",
        "message": name,
        "type": "Normal",
    }
    return await client.create(EVENTS, body)


@pytest.mark.parametrize("decode", [json.loads, wire.decode_event], ids=["json", "wire"])
async def test_a_watch_from_a_compacted_version_is_410_gone(
    api: ApiServer, admin: ApiClient, run: str, decode: Decode
) -> None:
    old = await _event(admin, run, "old")
    await _event(admin, run, "new")
    await _compact_after_a_write(api, admin, run)
    with pytest.raises(ApiError) as e:
        version = old["metadata"]["resourceVersion"]
        async with admin.watch(EVENTS, decode=decode, resourceVersion=version, timeoutSeconds=5) as s:
            async for _ in s:
                pass
    assert e.value.status == 410 and e.value.reason in ("Expired", "Gone"), e.value


class FirstWatchFrom:
    """The real client, counting the Informer's calls; its first watch starts from `version` (one compacted away)
    when given."""

    def __init__(self, client: ApiClient, version: str | None) -> None:
        self.client = client
        self.version = version
        self.lists = 0
        self.watches: list[str] = []
        self.params: list[dict[str, Any]] = []

    async def get(self, target: str, **params: Any) -> dict[str, Any]:
        self.lists += 1
        return await self.client.get(target, **params)

    def watch(
        self, target: str, *, decode: Decode, **params: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        if not self.watches and self.version is not None:
            params["resourceVersion"] = self.version
        self.watches.append(str(params.get("resourceVersion", "")))
        self.params.append(dict(params))
        return self.client.watch(target, decode=decode, **params)


async def _until(check: Any, seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 (the Informer offers no event to wait on)
            await asyncio.sleep(0.05)


async def test_informer_relists_on_410(api: ApiServer, admin: ApiClient, run: str) -> None:
    a = await _event(admin, run, "a")
    await _event(admin, run, "b")
    await _compact_after_a_write(api, admin, run)
    source = FirstWatchFrom(admin, a["metadata"]["resourceVersion"])
    inf = Informer(source, EVENTS, what="events", label_selector=f"rest-run={run}", watch_seconds=30)
    task = asyncio.create_task(inf.run())
    try:
        await _until(lambda: len(source.watches) >= 2)
        assert source.lists == 2, "a 410 on the watch must relist"
        assert source.watches[1] != a["metadata"]["resourceVersion"]
        assert set(inf.cache) == {f"rest-{run}-a", f"rest-{run}-b"}
        await _event(admin, run, "c")
        await _until(lambda: f"rest-{run}-c" in inf.cache)
        assert source.lists == 2 and len(source.watches) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_informer_follows_bookmarks(admin: ApiClient, run: str) -> None:
    await _configmap(admin, f"rest-{run}-a", {"rest-run": run})
    source = FirstWatchFrom(admin, None)
    inf = Informer(source, CONFIGMAPS, what="configmaps", label_selector=f"rest-run={run}", watch_seconds=5)
    task = asyncio.create_task(inf.run())
    try:
        await _until(lambda: bool(source.watches))
        await _configmap(admin, f"rest-{run}-b", {"rest-run": run})
        await _until(lambda: f"rest-{run}-b" in inf.cache)
        # Writes no watch of ours sees still move its version: by bookmarks.
        other = await _configmap(admin, f"rest-{run}-c", {"rest-run": "elsewhere"})
        await _until(lambda: int(inf._resume or 0) >= int(other["metadata"]["resourceVersion"]))
        assert f"rest-{run}-c" not in inf.cache and source.lists == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_streaming_list_and_the_watch_it_becomes(admin: ApiClient, run: str) -> None:
    """The controller's way to read a whole collection: one watch with sendInitialEvents, no list call; the
    server ends the initial objects with its annotated bookmark and the same watch carries the changes after."""
    for name in "abc":
        await _configmap(admin, f"rest-{run}-{name}", {"rest-run": run})
    source = FirstWatchFrom(admin, None)
    inf = Informer(
        source, CONFIGMAPS, what="configmaps", label_selector=f"rest-run={run}", page_size=2, list_from_cache=False
    )
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 20)
        assert set(inf.cache) == {f"rest-{run}-{n}" for n in "abc"}
        assert source.lists == 0 and source.params[0]["sendInitialEvents"] == "true"
        await _configmap(admin, f"rest-{run}-d", {"rest-run": run})
        await admin.delete(path("", "v1", "configmaps", "default", f"rest-{run}-a"))
        await _until(lambda: set(inf.cache) == {f"rest-{run}-{n}" for n in "bcd"})
        assert source.lists == 0 and len(source.watches) == 1, "the streamed list's watch did not carry the changes"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_compiled_decoder_streams_objects_as_the_server_holds_them(admin: ApiClient, run: str) -> None:
    """The controller's informers read their watches with csidriver.kube.wire: Leases (spec, no status) streamed
    through it arrive as a GET of each gives them, less managedFields, and so do changes on the same watch."""
    leases = path("coordination.k8s.io", "v1", "leases", "default")

    async def lease(name: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": "2026-12-08T01:00:00.000000Z"}
        meta = {"name": f"rest-{run}-{name}", "labels": {"rest-run": run}, "annotations": {"a": name}}
        await admin.create(leases, {"metadata": meta, "spec": spec})

    async def as_held(name: str) -> dict[str, Any]:
        held = await admin.get(f"{leases}/rest-{run}-{name}")
        assert held["metadata"].pop("managedFields"), "the server records who wrote what"
        return held

    for name in "ab":
        await lease(name)
    inf = Informer(
        admin, leases, what="leases", label_selector=f"rest-run={run}", list_from_cache=False, decode=wire.decode_event
    )
    task = asyncio.create_task(inf.run())
    try:
        await asyncio.wait_for(inf.synced.wait(), 20)
        assert set(inf.cache) == {f"rest-{run}-a", f"rest-{run}-b"}
        for name in "ab":
            assert inf.cache[f"rest-{run}-{name}"] == await as_held(name)
        await lease("c")
        await _until(lambda: f"rest-{run}-c" in inf.cache)
        assert inf.cache[f"rest-{run}-c"] == await as_held("c")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_rotated_token_file_is_read_again(api: ApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(api.identities["controller"].token)
    endpoint, creds = http.from_kubeconfig(_kubeconfig(api, tmp_path, {"tokenFile": "token"}))
    assert isinstance(creds, http.TokenFile)
    creds.max_age = 0.5
    client = ApiClient(http.Transport(endpoint, creds), 100, 100)
    try:
        assert await whoami(client) == api.identities["controller"].user
        token.write_text(api.identities["agent"].token + "\n")  # the kubelet rotates the projected token
        await asyncio.sleep(0.6)
        assert await whoami(client) == api.identities["agent"].user
        # A token the server no longer accepts while still cached: the 401 reads the file again, then retries.
        creds.max_age = 3600
        token.write_text("revoked-token")
        await creds.get(refresh=True)
        token.write_text(api.identities["controller"].token)
        assert await whoami(client) == api.identities["controller"].user
        token.write_text("revoked-token")
        await creds.get(refresh=True)
        with pytest.raises(ApiError) as e:
            await whoami(client)  # read again, still refused: the 401 surfaces
        assert e.value.status == 401
    finally:
        await client.close()


async def test_exec_plugin_and_tls_verified_against_the_servers_ca(api: ApiServer, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    plugin = tmp_path / "credential-plugin"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": api.identities["agent"].token, "expirationTimestamp": "2999-01-01T00:00:00Z"},
    }
    plugin.write_text(
        f"#!{sys.executable}\nimport pathlib\n"
        f"p = pathlib.Path({str(runs)!r}); p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
        f"print({json.dumps(json.dumps(credential))})\n"
    )
    plugin.chmod(0o755)
    user = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin)}}
    cluster = {"server": api.url, "certificate-authority": str(api.ca_file)}
    endpoint, creds = http.from_kubeconfig(_kubeconfig(api, tmp_path, user, cluster))
    assert not endpoint.insecure and endpoint.ca_pem
    client = ApiClient(http.Transport(endpoint, creds), 100, 100)
    try:
        for _ in range(20):
            assert await whoami(client) == api.identities["agent"].user
        assert runs.read_text() == "x", "an unexpired credential must be cached"
        assert client.transport.connections == 1, "sequential calls must reuse one connection"
    finally:
        await client.close()
    assert client.transport.connections == 0


async def test_tls_refuses_a_server_its_ca_did_not_sign(api: ApiServer, tmp_path: Path) -> None:
    key, cert = tmp_path / "other.key", tmp_path / "other.crt"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other-ca"]
    proc = await asyncio.create_subprocess_exec(*argv, "-keyout", str(key), "-out", str(cert), stderr=subprocess.PIPE)
    assert await proc.wait() == 0
    user = {"token": api.identities["admin"].token}
    endpoint, creds = http.from_kubeconfig(
        _kubeconfig(api, tmp_path, user, {"server": api.url, "certificate-authority": str(cert)})
    )
    client = ApiClient(http.Transport(endpoint, creds), 100, 100)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await whoami(client)
    finally:
        await client.close()

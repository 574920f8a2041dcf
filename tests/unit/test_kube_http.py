"""The API client's HTTP/1.1 transport against a tiny local asyncio server that answers as the test scripts it:
keep-alive reuse, chunked bodies, Status errors, watch lines split across chunks, stale pooled connections, timeouts,
token files re-read (periodically and on a 401), exec credential plugins, kubeconfigs, TLS with client certificates,
and the request counter and write rate limit on top."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from csidriver.kube import http
from csidriver.kube.client import ApiClient
from csidriver.kube.http import ApiError, Credential, Endpoint, Transport


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    conn: int


Answer = Callable[[Request], Awaitable[bytes | None]]  # raw bytes to write; None: close the connection


def reply(status: int = 200, body: Any = None, *, chunks: list[bytes] | None = None, close: bool = False) -> bytes:
    phrase = {200: "OK", 201: "Created", 401: "Unauthorized", 404: "Not Found", 409: "Conflict"}.get(status, "X")
    head = f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    if chunks is not None:
        payload = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: y\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + payload
    raw = json.dumps(body).encode() if body is not None else b""
    return (head + f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw


def status(code: int, reason: str, message: str) -> Any:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


@dataclass
class Server:
    answer: Answer
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    open: int = 0
    peers: list[Any] = field(default_factory=list)
    port: int = 0
    close_after: set[str] = field(default_factory=set)  # targets whose answer ends the connection
    trickle: int = 0  # > 0: answers are written this many bytes at a time, each piece sent on its own
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        self.open += 1
        me = self.connections
        self.peers.append(writer.get_extra_info("peercert"))
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(method, target, headers, body, me)
                self.requests.append(req)
                out = await self.answer(req)
                if out is None:
                    return
                for i in range(0, len(out), self.trickle or len(out) or 1):
                    writer.write(out[i : i + (self.trickle or len(out))])
                    await writer.drain()
                    if self.trickle:
                        await asyncio.sleep(0.002)  # the next piece comes in a read of its own
                if req.target in self.close_after:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
            return
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def serving(
    answer: Answer, creds: http.Credentials | None = None, **kw: Any
) -> AsyncIterator[tuple[Server, Transport]]:
    server = await Server(answer).start()
    t = Transport(Endpoint("127.0.0.1", server.port, tls=False), creds or http.Static(Credential("t0")), **kw)
    try:
        yield server, t
    finally:
        await t.close()
        await server.stop()


async def test_keep_alive_chunked_and_content_length_bodies() -> None:
    async def answer(req: Request) -> bytes:
        if req.target == "/chunked":
            return reply(chunks=[b'{"a":', b" [1, 2", b"]}"])
        return reply(body={"got": req.method, "len": len(req.body)})

    async with serving(answer) as (server, t):
        a = await t.request("GET", "/plain")
        b = await t.request("POST", "/plain", b'{"x":1}', {"Content-Type": "application/json"})
        c = await t.request("GET", "/chunked")
        assert json.loads(a.body) == {"got": "GET", "len": 0}
        assert json.loads(b.body) == {"got": "POST", "len": 7}
        assert json.loads(c.body) == {"a": [1, 2]}
        assert server.connections == 1, "sequential calls must share one kept-alive connection"
        assert server.requests[1].headers["content-type"] == "application/json"
        assert all(r.headers["authorization"] == "Bearer t0" for r in server.requests)
        assert server.requests[0].headers["host"] == f"127.0.0.1:{server.port}"


async def test_concurrent_calls_open_at_most_the_pool_size() -> None:
    gate = asyncio.Event()

    async def answer(req: Request) -> bytes:
        await gate.wait()
        return reply(body={})

    async with serving(answer, max_connections=3) as (server, t):
        calls = [asyncio.create_task(t.request("GET", f"/{i}")) for i in range(8)]
        await asyncio.sleep(0.05)
        assert server.open == 3
        gate.set()
        await asyncio.gather(*calls)
        assert server.connections == 3


async def test_connection_close_answers_are_not_reused_and_a_stale_idle_connection_is_replaced() -> None:
    async def answer(req: Request) -> bytes | None:
        if req.target == "/drop":
            return None  # the server closed the kept-alive connection instead of answering
        return reply(body={"conn": req.conn}, close=req.target == "/close")

    async with serving(answer) as (server, t):
        await t.request("GET", "/close")
        await t.request("GET", "/x")
        assert server.connections == 2
        # A pooled connection the server drops when we send on it: sent again, once, on a new connection.
        got = await t.request("GET", "/y")
        assert json.loads(got.body)["conn"] == 2
        drop = await t.request("GET", "/y")
        assert json.loads(drop.body)["conn"] == 2
        with pytest.raises(http.TransportError):
            await t.request("GET", "/drop")  # on a reused connection, then on a fresh one: gives up
        assert [r.conn for r in server.requests[-2:]] == [2, 3]


async def test_status_errors_carry_code_reason_and_message() -> None:
    async def answer(req: Request) -> bytes:
        if req.target.startswith("/gone"):
            return reply(404, status(404, "NotFound", 'devicevolumes "x" not found'))
        return b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 7\r\n\r\nupstrem"

    async with serving(answer) as (_server, t):
        client = ApiClient(t, 100, 100)
        with pytest.raises(ApiError) as e:
            await client.get("/gone/x")
        assert (e.value.status, e.value.reason, e.value.message) == (404, "NotFound", 'devicevolumes "x" not found')
        with pytest.raises(ApiError) as e:
            await client.get("/other")
        assert (e.value.status, e.value.reason, e.value.message) == (502, "Bad Gateway", "upstrem")


async def test_a_call_that_gets_no_answer_times_out_and_its_connection_is_dropped() -> None:
    async def answer(req: Request) -> bytes:
        if req.target == "/slow":
            await asyncio.sleep(5)
        return reply(body={"conn": req.conn})

    async with serving(answer, read_timeout=0.2) as (_server, t):
        with pytest.raises(TimeoutError):
            await t.request("GET", "/slow")
        got = await t.request("GET", "/fast")
        assert json.loads(got.body)["conn"] == 2, "a connection with an answer still pending must not be reused"


async def test_connect_timeout_covers_the_tls_handshake() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await reader.read()  # accepts, never answers the TLS hello
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = Transport(Endpoint("127.0.0.1", port, insecure=True), http.Static(Credential()), connect_timeout=0.2)
    start = time.monotonic()
    with pytest.raises(http.TransportError, match="timed out"):
        await t.request("GET", "/")
    assert time.monotonic() - start < 5
    assert t.connections == 0
    await t.close()
    server.close()
    await server.wait_closed()


async def test_watch_lines_split_across_chunks_and_an_error_event() -> None:
    events = [
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
        {"type": "ERROR", "object": status(410, "Expired", "too old resource version: 1 (9)")},
    ]
    raw = b"".join(json.dumps(e).encode() + b"\n" for e in events)

    async def answer(req: Request) -> bytes:
        pieces = [raw[i : i + 7] for i in range(0, len(raw), 7)]  # lines cut anywhere
        return reply(chunks=pieces)

    async with serving(answer) as (server, t):
        client = ApiClient(t, 100, 100)
        got: list[Any] = []
        with pytest.raises(ApiError) as e:
            async with client.watch("/apis/g/v1/things", resourceVersion="3", allowWatchBookmarks=True) as stream:
                async for event in stream:
                    got.append(event)
        assert e.value.status == 410 and e.value.reason == "Expired"
        assert got == events[:2]
        assert server.requests[0].target == "/apis/g/v1/things?resourceVersion=3&allowWatchBookmarks=true&watch=true"
        assert client.requests == {"watch": 1}
        assert t.connections == 0, "a finished watch must close its own connection"


async def test_chunked_bodies_that_trickle_in_a_few_bytes_at_a_time() -> None:
    """Chunk-size lines, chunk data, their CRLFs and the trailers cut across reads anywhere: every byte of the body
    arrives, nothing past its end is read (the next answer on the connection is whole), and a body that breaks off
    or has a bad size line raises TransportError."""
    lines = [b'{"type":"ADDED","object":{"metadata":{"name":"v%d"}}}' % i for i in range(6)]
    body = b"\n".join(lines) + b"\n"

    async def answer(req: Request) -> bytes:
        if req.target == "/broken":
            return reply(chunks=[body])[:-40]  # ends within the data of its only chunk
        if req.target == "/bad-size":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        return reply(chunks=[body[i : i + 11] for i in range(0, len(body), 11)])

    async with serving(answer) as (server, t):
        server.trickle = 3
        server.close_after = {"/broken"}
        first = await t.request("GET", "/a", None, {})
        second = await t.request("GET", "/b", None, {})
        assert first.body == body and second.body == body
        assert server.connections == 1, "the connection must be reusable after a trickled chunked body"
        async with t.stream("GET", "/w") as stream:
            assert [line async for line in stream] == lines
        with pytest.raises(http.TransportError, match="closed in a chunked body"):
            await t.request("GET", "/broken", None, {})
        server.trickle = 0
        with pytest.raises(http.TransportError, match="bad chunk size"):
            await t.request("GET", "/bad-size", None, {})


async def test_a_watch_refused_raises_the_status_and_close_ends_a_running_watch() -> None:
    started = asyncio.Event()

    async def answer(req: Request) -> bytes | None:
        if "resourceVersion=1" in req.target:
            return reply(410, status(410, "Gone", "too old"))
        started.set()
        await asyncio.sleep(30)  # a quiet watch
        return None

    async with serving(answer) as (_server, t):
        client = ApiClient(t, 100, 100)
        with pytest.raises(ApiError) as e:
            async with client.watch("/w", resourceVersion="1"):
                pass
        assert e.value.status == 410

        async def watching() -> None:
            async with client.watch("/w", resourceVersion="2") as stream:
                async for _ in stream:
                    pass

        task = asyncio.create_task(watching())
        await started.wait()
        assert t.connections == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t.connections == 0, "a cancelled watch must close its connection"


async def test_token_file_is_read_again_after_its_max_age_and_on_a_401(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old\n")
    valid = {"old"}

    async def answer(req: Request) -> bytes:
        if req.headers.get("authorization", "").removeprefix("Bearer ") not in valid:
            return reply(401, status(401, "Unauthorized", "Unauthorized"))
        return reply(body={"as": req.headers["authorization"]})

    creds = http.TokenFile(token, max_age=0.2)
    async with serving(answer, creds) as (server, t):
        assert json.loads((await t.request("GET", "/")).body) == {"as": "Bearer old"}
        token.write_text("new\n")
        valid.add("new")
        assert json.loads((await t.request("GET", "/")).body) == {"as": "Bearer old"}  # still cached
        await asyncio.sleep(0.25)
        assert json.loads((await t.request("GET", "/")).body) == {"as": "Bearer new"}
        # Rotated and the old one revoked before the cache expired: the 401 makes it read the file again.
        creds.max_age = 3600
        token.write_text("newer")
        valid.clear()
        valid.add("newer")
        assert json.loads((await t.request("GET", "/")).body) == {"as": "Bearer newer"}
        assert [r.headers["authorization"] for r in server.requests[-2:]] == ["Bearer new", "Bearer newer"]
        # A 401 that persists is answered once more, then surfaces.
        valid.clear()
        assert (await t.request("GET", "/")).status == 401
        assert len(server.requests) == 7


def _plugin(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(f"#!{sys.executable}\n{body}")
    script.chmod(0o755)
    return script


async def test_exec_plugin_is_cached_until_its_expiry_and_run_again_when_refreshed(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _plugin(
        tmp_path,
        f"""import datetime, json, os, sys, pathlib
runs = pathlib.Path({str(runs)!r})
n = len(runs.read_text()) if runs.exists() else 0
runs.write_text("x" * (n + 1))
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
assert info["kind"] == "ExecCredential" and info["spec"]["interactive"] is False, info
assert sys.argv[1:] == ["get-token", "--cluster", "c1"] and os.environ["REGION"] == "eu"
ttl = float(os.environ["TTL"])
exp = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=ttl)
print(json.dumps({{"apiVersion": info["apiVersion"], "kind": "ExecCredential",
    "status": {{"token": f"tok-{{n}}", "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
""",
    )
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
        "users": [
            {
                "name": "u",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": "./plugin.py",
                        "args": ["get-token", "--cluster", "c1"],
                        "env": [{"name": "REGION", "value": "eu"}, {"name": "TTL", "value": "3600"}],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(cfg))
    endpoint, creds = http.from_kubeconfig(path)
    assert isinstance(creds, http.ExecPlugin) and endpoint == Endpoint("127.0.0.1", 1, tls=False)
    assert (await creds.get()).token == "tok-0"
    assert (await creds.get()).token == "tok-0", "an unexpired credential must be cached"
    assert (await creds.get(refresh=True)).token == "tok-1"
    creds.env = {**creds.env, "TTL": "-10"}  # the next credential comes already expired
    assert (await creds.get(refresh=True)).token == "tok-2"
    assert (await creds.get()).token == "tok-3"
    assert runs.read_text() == "xxxx"


async def test_exec_plugin_failures_are_reported(tmp_path: Path) -> None:
    bad = http.ExecPlugin(str(_plugin(tmp_path, "import sys\nsys.stderr.write('no login')\nsys.exit(3)\n")))
    with pytest.raises(RuntimeError, match="exited 3: no login"):
        await bad.get()
    empty = http.ExecPlugin(str(_plugin(tmp_path, "print('{\"status\": {}}')\n")))
    with pytest.raises(RuntimeError, match="neither a token nor a client certificate"):
        await empty.get()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate for user `alice`, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca"),
        *("-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt")),
    )
    for name, subj, ext in (
        ("server", "/CN=apiserver", "subjectAltName=IP:127.0.0.1"),
        ("client", "/CN=alice/O=devs", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-subj", subj),
            *("-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr")),
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            *("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key")),
            *("-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt")),
        )
    return d


async def test_tls_with_a_ca_and_client_certificates_from_a_kubeconfig(pki: Path, tmp_path: Path) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(pki / "server.crt", pki / "server.key")
    tls.verify_mode = ssl.CERT_REQUIRED

    async def answer(req: Request) -> bytes:
        return reply(body={"auth": req.headers.get("authorization")})

    server = await Server(answer, tls=tls).start()
    b64 = lambda p: base64.b64encode((pki / p).read_bytes()).decode()  # noqa: E731
    cfg = {
        "clusters": [
            {"name": "files", "cluster": {"server": f"https://127.0.0.1:{server.port}", "certificate-authority": "ca"}},
            {
                "name": "data",
                "cluster": {"server": f"https://127.0.0.1:{server.port}", "certificate-authority-data": b64("ca.crt")},
            },
        ],
        "users": [
            {"name": "files", "user": {"client-certificate": "client.crt", "client-key": "client.key"}},
            {
                "name": "data",
                "user": {"client-certificate-data": b64("client.crt"), "client-key-data": b64("client.key")},
            },
        ],
        "contexts": [
            {"name": "files", "context": {"cluster": "files", "user": "files"}},
            {"name": "data", "context": {"cluster": "data", "user": "data"}},
        ],
        "current-context": "files",
    }
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_bytes((pki / name).read_bytes())
    (tmp_path / "ca").write_bytes((pki / "ca.crt").read_bytes())
    kubeconfig = tmp_path / "kubeconfig.yaml"
    import yaml

    kubeconfig.write_text(yaml.safe_dump(cfg))  # YAML, as users' kubeconfigs are
    try:
        for context in (None, "data"):
            endpoint, creds = http.from_kubeconfig(kubeconfig, context)
            t = Transport(endpoint, creds)
            try:
                got = await t.request("GET", "/")
            finally:
                await t.close()
            assert json.loads(got.body) == {"auth": None}
            subject = dict(x[0] for x in server.peers[-1]["subject"])
            assert subject["commonName"] == "alice"
        # Without the CA the server's certificate is not trusted.
        endpoint, creds = http.from_kubeconfig(kubeconfig)
        t = Transport(Endpoint(endpoint.host, endpoint.port, ca_pem=(pki / "client.crt").read_bytes()), creds)
        with pytest.raises(ssl.SSLCertVerificationError):
            await t.request("GET", "/")
        await t.close()
    finally:
        await server.stop()


async def test_kubeconfig_tokens_and_in_cluster(tmp_path: Path) -> None:
    cfg = {
        "clusters": [{"name": "c", "cluster": {"server": "https://[::1]:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "a", "user": {"token": "abc"}}, {"name": "b", "user": {"tokenFile": "tok"}}],
        "contexts": [
            {"name": "a", "context": {"cluster": "c", "user": "a"}},
            {"name": "b", "context": {"cluster": "c", "user": "b"}},
        ],
        "current-context": "b",
    }
    (tmp_path / "kc").write_text(json.dumps(cfg))
    (tmp_path / "tok").write_text("from-file\n")
    endpoint, creds = http.from_kubeconfig(tmp_path / "kc")
    assert endpoint == Endpoint("::1", 6443, True, insecure=True) and endpoint.authority == "[::1]:6443"
    assert (await creds.get()).token == "from-file"
    _, creds = http.from_kubeconfig(tmp_path / "kc", "a")
    assert (await creds.get()).token == "abc"
    with pytest.raises(ValueError, match="no context named 'zz'"):
        http.from_kubeconfig(tmp_path / "kc", "zz")

    secrets = tmp_path / "sa"
    secrets.mkdir()
    (secrets / "token").write_text("sa-token")
    (secrets / "ca.crt").write_text("PEM")
    endpoint, creds = http.in_cluster(
        {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}, secrets
    )
    assert endpoint == Endpoint("10.0.0.1", 443, True, ca_pem=b"PEM")
    assert isinstance(creds, http.TokenFile) and (await creds.get()).token == "sa-token"
    with pytest.raises(ValueError, match="not in a cluster"):
        http.in_cluster({}, secrets)


async def test_requests_are_counted_by_verb_and_writes_rate_limited() -> None:
    async def answer(req: Request) -> bytes:
        return reply(201 if req.method == "POST" else 200, {"metadata": {}, "items": []})

    async with serving(answer) as (server, t):
        client = ApiClient(t, qps=20, burst=2)
        start = time.monotonic()
        for _ in range(4):
            await client.create("/x", {"a": 1})
        writes_took = time.monotonic() - start
        await client.get("/x")
        await client.patch("/x/a", {"b": None})
        await client.replace("/x/a", {})
        await client.delete("/x/a", {"preconditions": {"resourceVersion": "3"}})
        assert client.requests == {"create": 4, "get_or_list": 1, "patch": 1, "update": 1, "delete": 1}
        assert writes_took >= 0.09, "beyond the burst, writes must wait for the bucket"
        patch = server.requests[5]
        assert patch.headers["content-type"] == "application/merge-patch+json" and patch.body == b'{"b":null}'
        assert json.loads(server.requests[-1].body) == {"preconditions": {"resourceVersion": "3"}}


async def test_list_all_follows_continue_tokens() -> None:
    async def answer(req: Request) -> bytes:
        if "continue=c1" in req.target:
            return reply(body={"metadata": {"resourceVersion": "8"}, "items": [{"n": 3}]})
        return reply(body={"metadata": {"continue": "c1"}, "items": [{"n": 1}, {"n": 2}]})

    async with serving(answer) as (server, t):
        got = await ApiClient(t, 100, 100).list_all("/l", page=2, labelSelector="a=b")
        assert got["items"] == [{"n": 1}, {"n": 2}, {"n": 3}] and got["metadata"]["resourceVersion"] == "8"
        assert [r.target for r in server.requests] == [
            "/l?limit=2&labelSelector=a%3Db",
            "/l?limit=2&continue=c1&labelSelector=a%3Db",
        ]


async def test_kubeconfig_files_listed_as_in_kubeconfig_are_merged_first_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (two / "tok").write_text("from-two")
    (one / "config").write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://first:1"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    (two / "config").write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://second:2"}}],
                "users": [{"name": "u", "user": {"tokenFile": "tok"}}],
                "current-context": "y",
            }
        )
    )
    listed = f"{one / 'config'}:{tmp_path / 'missing'}:{two / 'config'}"
    endpoint, creds = http.from_kubeconfig(listed)
    assert (endpoint.host, endpoint.port) == ("first", 1)
    assert (await creds.get()).token == "from-two", "a relative tokenFile is relative to its own file"


async def test_a_request_whose_answer_broke_off_is_never_sent_twice() -> None:
    async def answer(req: Request) -> bytes | None:
        if req.target == "/create":
            return b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{"  # and the connection closes
        return reply(body={})

    async with serving(answer) as (server, t):
        server.close_after.add("/create")
        await t.request("GET", "/warm")  # the next call goes on a reused connection
        with pytest.raises(http.TransportError):
            await t.request("POST", "/create", b"{}")
        assert [r.target for r in server.requests] == ["/warm", "/create"], "served once: must not be sent again"


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def answer(req: Request) -> bytes:
        return reply(body={"conn": req.conn})

    async with serving(answer) as (_server, t):
        await t.request("GET", "/a")
        monkeypatch.setattr(http, "IDLE_SECONDS", 0.0)
        got = await t.request("GET", "/b")
        assert json.loads(got.body) == {"conn": 2} and t.connections == 1


async def test_exec_plugin_client_certificates(pki: Path, tmp_path: Path) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    tls.load_cert_chain(pki / "server.crt", pki / "server.key")
    tls.verify_mode = ssl.CERT_REQUIRED

    async def answer(req: Request) -> bytes:
        return reply(body={})

    status = {
        "clientCertificateData": (pki / "client.crt").read_text(),
        "clientKeyData": (pki / "client.key").read_text(),
    }
    plugin = _plugin(tmp_path, f"import json\nprint(json.dumps({{'status': {status!r}}}))\n")
    server = await Server(answer, tls=tls).start()
    t = Transport(
        Endpoint("127.0.0.1", server.port, ca_pem=(pki / "ca.crt").read_bytes()), http.ExecPlugin(str(plugin))
    )
    try:
        assert (await t.request("GET", "/")).status == 200
        assert dict(x[0] for x in server.peers[-1]["subject"])["commonName"] == "alice"
        assert "authorization" not in server.requests[-1].headers
    finally:
        await t.close()
        await server.stop()

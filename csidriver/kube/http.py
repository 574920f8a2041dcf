"""HTTP/1.1 to the Kubernetes API server on asyncio streams: a small keep-alive pool, chunked bodies, line streams
for watches, and the credentials a client meets (a bearer token, a token file re-read as it rotates, an exec
credential plugin, client certificates), with one retry on a 401 after the credentials are read again.

Nothing here knows Kubernetes' resources: csidriver.kube.client builds paths and reads JSON on top of this.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import math
import os
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

TOKEN_MAX_AGE = 60.0  # a token file is read again at least this often (bound service-account tokens rotate)
_LINE_LIMIT = 1 << 20  # longest header line accepted
_READ_SIZE = 1 << 18  # bytes asked of the socket at a time for a chunked body
IDLE_SECONDS = 30.0  # a kept-alive connection idle longer is closed rather than reused (the server may have)
IN_CLUSTER_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """An answer other than 2xx: the HTTP status, and the server's Status reason and message when it sent one."""

    def __init__(self, status: int, reason: str = "", message: str = "", body: Any = None) -> None:
        super().__init__(f"({status}) {reason}: {message}" if message else f"({status}) {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = body

    @classmethod
    def from_body(cls, status: int, phrase: str, raw: bytes) -> ApiError:
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and parsed.get("kind") == "Status":
            return cls(status, str(parsed.get("reason") or phrase), str(parsed.get("message") or ""), parsed)
        return cls(status, phrase, raw[:500].decode(errors="replace").strip(), parsed)


class TransportError(ConnectionError):
    """The connection broke or the server's answer was not HTTP."""


# -- credentials -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Credential:
    token: str | None = None
    cert_pem: bytes | None = None  # a client certificate (chain) and its key, PEM
    key_pem: bytes | None = None


class Credentials(Protocol):
    async def get(self, refresh: bool = False) -> Credential:
        """The credential to send; `refresh` after a 401: read it again from its source."""
        ...


@dataclass
class Static:
    credential: Credential

    async def get(self, refresh: bool = False) -> Credential:
        return self.credential


@dataclass
class TokenFile:
    """A token in a file that is rewritten as it rotates: read again every `max_age` seconds and on a 401."""

    path: Path
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    max_age: float = TOKEN_MAX_AGE
    _cached: Credential | None = None
    _read_at: float = -math.inf

    async def get(self, refresh: bool = False) -> Credential:
        if refresh or self._cached is None or time.monotonic() - self._read_at >= self.max_age:
            token = self.path.read_text().strip()
            self._cached = Credential(token or None, self.cert_pem, self.key_pem)
            self._read_at = time.monotonic()
        return self._cached


@dataclass
class ExecPlugin:
    """A client.authentication.k8s.io ExecCredential plugin (what EKS, GKE and others put in kubeconfigs): run
    when no credential is cached, when the cached one reached its expirationTimestamp, and after a 401."""

    command: str
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    api_version: str = "client.authentication.k8s.io/v1"
    cluster: Mapping[str, Any] | None = None  # sent to the plugin when the kubeconfig asks (provideClusterInfo)
    timeout: float = 60.0
    _cached: Credential | None = None
    _expires: float = math.inf  # wall clock
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self, refresh: bool = False) -> Credential:
        async with self._lock:
            if refresh or self._cached is None or time.time() >= self._expires:
                self._cached, self._expires = await self._run()
            return self._cached

    async def _run(self) -> tuple[Credential, float]:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = dict(self.cluster)
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        proc = await asyncio.create_subprocess_exec(
            self.command,
            *self.args,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"credential plugin {self.command} exited {proc.returncode}: {err.decode()[-500:]}")
        try:
            status = json.loads(out)["status"]
        except (ValueError, KeyError, TypeError) as e:
            raise RuntimeError(f"credential plugin {self.command}: no ExecCredential status in its output") from e
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        cred = Credential(status.get("token") or None, cert.encode() if cert else None, key.encode() if key else None)
        if not cred.token and not (cred.cert_pem and cred.key_pem):
            raise RuntimeError(f"credential plugin {self.command} gave neither a token nor a client certificate")
        expires = math.inf
        if status.get("expirationTimestamp"):
            stamp = str(status["expirationTimestamp"]).replace("Z", "+00:00")
            expires = datetime.datetime.fromisoformat(stamp).timestamp()
        return cred, expires


# -- where the server is -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool = True
    ca_pem: bytes | None = None  # None: the system's trust store
    insecure: bool = False  # insecure-skip-tls-verify
    server_name: str | None = None  # tls-server-name; default: host

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def tls_context(endpoint: Endpoint, cred: Credential) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if endpoint.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif endpoint.ca_pem is not None:
        ctx.load_verify_locations(cadata=endpoint.ca_pem.decode())
    else:
        ctx.load_default_certs()
    if cred.cert_pem and cred.key_pem:
        # ssl loads a key pair only from files: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="kube-cert-") as d:
            cert, key = Path(d) / "cert.pem", Path(d) / "key.pem"
            cert.write_bytes(cred.cert_pem)
            key.touch(0o600)
            key.write_bytes(cred.key_pem)
            ctx.load_cert_chain(cert, key)
    return ctx


# -- the wire ------------------------------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int) -> None:
        self.reader = reader
        self.writer = writer
        self.generation = generation  # of the TLS context it was made with
        self.used = False
        self.answered = False  # a byte of the answer to its current request arrived
        self.idle_since = 0.0

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def send(self, head: bytes, body: bytes | None) -> None:
        self.writer.write(head + body if body else head)
        await self.writer.drain()

    async def head(self) -> tuple[int, str, dict[str, str]]:
        line = await self.reader.readline()
        if not line:
            raise TransportError("connection closed before an answer")
        self.answered = True
        parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP answer: {line[:80]!r}")
        headers: dict[str, str] = {}
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b"\n"):
                break
            if not h:
                raise TransportError("connection closed in the headers")
            name, _, value = h.decode("latin-1").partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        return int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    async def chunks(self, headers: Mapping[str, str], status: int, method: str) -> AsyncIterator[bytes]:
        """The body, as it arrives."""
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return
        if "chunked" in headers.get("transfer-encoding", "").lower():
            async for data in self._chunked():
                yield data
        elif "content-length" in headers:
            try:
                yield await self.reader.readexactly(int(headers["content-length"]))
            except asyncio.IncompleteReadError as e:
                raise TransportError("connection closed in the body") from e
        else:
            yield await self.reader.read()  # to the end of the connection

    async def _chunked(self) -> AsyncIterator[bytes]:
        """A chunked body, read in blocks of up to _READ_SIZE: each block gives the data of every chunk it completes,
        joined (a watch's events come one chunk each, tens to a block while a whole collection streams). Nothing past
        the body's end is read: the server sends nothing more before the next request."""
        buf = bytearray()
        pos = 0  # start of the first chunk not yet parsed
        done = False
        while True:
            parts: list[bytearray] = []
            while not done:
                eol = buf.find(b"\n", pos)
                if eol < 0:
                    if len(buf) - pos > _LINE_LIMIT:
                        raise TransportError(f"bad chunk size {bytes(buf[pos : pos + 40])!r}")
                    break
                try:
                    size = int(buf[pos:eol].split(b";", 1)[0].strip(), 16)
                except ValueError as e:
                    raise TransportError(f"bad chunk size {bytes(buf[pos : pos + 40])!r}") from e
                if size == 0:
                    done = _trailers_in(buf, eol + 1)  # else: read on until the trailers end
                    break
                end = eol + 1 + size
                if len(buf) < end + 2:
                    break  # the chunk and its CRLF are not all in yet
                parts.append(buf[eol + 1 : end])
                pos = end + 2
            if parts:
                yield b"".join(parts)
            if done:
                return
            del buf[:pos]
            pos = 0
            data = await self.reader.read(_READ_SIZE)
            if not data:
                raise TransportError("connection closed in a chunked body")
            buf += data


def _trailers_in(buf: bytearray, start: int) -> bool:
    """True if the trailer section that starts at `start` is all in (up to its empty line)."""
    while True:
        eol = buf.find(b"\n", start)
        if eol < 0:
            return False
        if not buf[start:eol].strip():
            return True
        start = eol + 1


def _reusable(headers: Mapping[str, str]) -> bool:
    return "close" not in headers.get("connection", "").lower()


class Transport:
    """Requests to one API server. Short calls share up to `max_connections` kept-alive connections; each stream
    (a watch) has a connection of its own, closed when the stream ends. Few connections: each TLS connection holds
    a 256 KiB read buffer of asyncio's, and short calls take milliseconds."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        max_connections: int = 4,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        user_agent: str = "device-localpv",
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._user_agent = user_agent
        self._tls: tuple[Credential, ssl.SSLContext] | None = None
        self._generation = 0
        self._closed = False

    # -- connections -------------------------------------------------------------------------------------------
    def _context(self, cred: Credential) -> ssl.SSLContext:
        """The TLS context for `cred`: made again (and the idle connections dropped) when its certificate changes."""
        if self._tls is None or (self._tls[0].cert_pem, self._tls[0].key_pem) != (cred.cert_pem, cred.key_pem):
            self._tls = (cred, tls_context(self.endpoint, cred))
            self._generation += 1
        return self._tls[1]

    async def _connect(self, cred: Credential) -> _Conn:
        if self._closed:
            raise TransportError("transport closed")
        ep = self.endpoint
        ctx = self._context(cred) if ep.tls else None
        server_hostname = (ep.server_name or ep.host) if ctx is not None else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ep.host, ep.port, ssl=ctx, server_hostname=server_hostname, limit=_LINE_LIMIT),
                self._connect_timeout,
            )
        except TimeoutError as e:
            raise TransportError(f"connecting to {ep.authority} timed out") from e
        conn = _Conn(reader, writer, self._generation)
        self._open.add(conn)
        return conn

    async def _discard(self, conn: _Conn) -> None:
        self._open.discard(conn)
        await conn.close()

    async def _take(self, cred: Credential) -> _Conn:
        if self.endpoint.tls:
            self._context(cred)
        while self._idle:
            conn = self._idle.pop()
            fresh = time.monotonic() - conn.idle_since < IDLE_SECONDS
            if fresh and conn.generation == self._generation and not conn.reader.at_eof():
                return conn
            await self._discard(conn)
        return await self._connect(cred)

    async def _give_back(self, conn: _Conn) -> None:
        if self._closed:
            await self._discard(conn)
        else:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)

    def _head(
        self, method: str, target: str, cred: Credential, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.endpoint.authority}",
            f"User-Agent: {self._user_agent}",
            "Accept: application/json",
        ]
        if cred.token:
            lines.append(f"Authorization: Bearer {cred.token}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    # -- requests ------------------------------------------------------------------------------------------------
    async def request(
        self, method: str, target: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """One call, its whole answer read (any status). A 401 reads the credentials again and retries once."""
        cred = await self._credentials.get()
        resp = await self._attempt(method, target, body, headers or {}, cred)
        if resp.status == 401:
            fresh = await self._credentials.get(refresh=True)
            log.info("401 from the API server: credentials read again, retrying %s", method)
            resp = await self._attempt(method, target, body, headers or {}, fresh)
        return resp

    async def _attempt(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str], cred: Credential
    ) -> Response:
        async with self._slots:
            head = self._head(method, target, cred, headers, body)
            for _ in range(2):
                conn = await self._take(cred)
                reused = conn.used
                conn.used = True
                conn.answered = False
                try:
                    async with asyncio.timeout(self._read_timeout):
                        await conn.send(head, body)
                        status, reason, resp_headers = await conn.head()
                        data = b"".join([c async for c in conn.chunks(resp_headers, status, method)])
                except TimeoutError:
                    await self._discard(conn)
                    raise
                except (OSError, asyncio.IncompleteReadError) as e:
                    await self._discard(conn)
                    if reused and not conn.answered:
                        # The server closed a kept-alive connection as we sent, before any answer: once more, on
                        # a new one. After a byte of an answer, the request may have been served: never twice.
                        continue
                    if isinstance(e, TransportError):
                        raise
                    raise TransportError(str(e) or type(e).__name__) from e
                except BaseException:
                    await self._discard(conn)
                    raise
                if _reusable(resp_headers) and (
                    "content-length" in resp_headers or "transfer-encoding" in resp_headers
                ):
                    await self._give_back(conn)
                else:
                    await self._discard(conn)
                return Response(status, reason, resp_headers, data)
            raise TransportError("unreachable")

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, target: str, headers: Mapping[str, str] | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A long answer read line by line on a connection of its own (a watch): yields its lines once the server
        answered 200, raises ApiError otherwise. The connection is closed when the block ends."""
        cred = await self._credentials.get()
        for attempt in range(2):
            conn = await self._connect(cred)
            try:
                async with asyncio.timeout(self._read_timeout):
                    await conn.send(self._head(method, target, cred, headers or {}, None), None)
                    status, reason, resp_headers = await conn.head()
                if status != 200:
                    async with asyncio.timeout(self._read_timeout):
                        raw = b"".join([c async for c in conn.chunks(resp_headers, status, method)])
                    if status == 401 and attempt == 0:
                        cred = await self._credentials.get(refresh=True)
                        continue
                    raise ApiError.from_body(status, reason, raw)
                yield _lines(conn.chunks(resp_headers, status, method))
                return
            except (OSError, asyncio.IncompleteReadError) as e:
                if isinstance(e, TransportError | TimeoutError):
                    raise
                raise TransportError(str(e) or type(e).__name__) from e
            finally:
                await self._discard(conn)

    @property
    def connections(self) -> int:
        """Connections open now, idle or in use."""
        return len(self._open)

    async def close(self) -> None:
        """Closes every connection, idle or streaming."""
        self._closed = True
        self._idle.clear()
        for conn in list(self._open):
            await self._discard(conn)


async def _lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *whole, pending = pending.split(b"\n")
        for line in whole:
            if line.strip():
                yield line
    if pending.strip():
        yield pending


# -- configuration ---------------------------------------------------------------------------------------------
def _split_server(server: str) -> tuple[str, int, bool]:
    scheme, sep, rest = server.partition("://")
    if not sep:
        scheme, rest = "https", server
    tls = scheme.lower() == "https"
    authority = rest.split("/", 1)[0]
    if authority.startswith("["):
        host, _, port = authority[1:].partition("]")
        port = port.lstrip(":")
    elif authority.count(":") == 1:
        host, _, port = authority.partition(":")
    else:
        host, port = authority, ""
    return host, int(port) if port else (443 if tls else 80), tls


def _data_or_file(user: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    if user.get(f"{key}-data"):
        return base64.b64decode(user[f"{key}-data"])
    if user.get(key):
        return (base / str(user[key])).read_bytes()
    return None


def _named(items: Any, name: str, what: str) -> tuple[dict[str, Any], Path]:
    for item in items or ():
        if item.get("name") == name:
            found: dict[str, Any] = item.get(what) or {}
            return found, item["_base"]
    raise ValueError(f"kubeconfig: no {what} named {name!r}")


def _read_config(file: Path) -> dict[str, Any]:
    text = file.read_text()
    try:
        cfg = json.loads(text)
    except ValueError:
        import yaml  # only for kubeconfigs that are not JSON: the driver in a cluster never reads one

        cfg = yaml.safe_load(text)
    return cfg if isinstance(cfg, dict) else {}


def _merged(paths: str) -> dict[str, Any]:
    """KUBECONFIG's files (separated as PATH is) merged as kubectl does: the first file to name a cluster, user or
    context, or to set current-context, wins. Each entry keeps its file's directory (`_base`), which its relative
    file names are relative to."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": [], "current-context": ""}
    files = [Path(p) for p in paths.split(os.pathsep) if p]
    for file in files:
        if len(files) > 1 and not file.exists():
            continue
        cfg = _read_config(file)
        base = file.resolve().parent
        for kind in ("clusters", "users", "contexts"):
            seen = {e["name"] for e in merged[kind]}
            for entry in cfg.get(kind) or ():
                if entry.get("name") not in seen:
                    merged[kind].append({**entry, "_base": base})
        merged["current-context"] = merged["current-context"] or cfg.get("current-context") or ""
    return merged


def from_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> tuple[Endpoint, Credentials]:
    """The server and credentials of a kubeconfig's current (or the given) context. `path` may list several files,
    as KUBECONFIG does. Relative file names in it are relative to the directory of the file that holds them, as
    kubectl reads them."""
    cfg = _merged(os.fspath(path))
    ctx, _ = _named(cfg.get("contexts"), context or cfg.get("current-context") or "", "context")
    cluster, cluster_base = _named(cfg.get("clusters"), ctx.get("cluster", ""), "cluster")
    user, base = _named(cfg.get("users"), ctx["user"], "user") if ctx.get("user") else ({}, cluster_base)
    host, port, tls = _split_server(str(cluster["server"]))
    endpoint = Endpoint(
        host,
        port,
        tls,
        ca_pem=_data_or_file(cluster, "certificate-authority", cluster_base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        server_name=cluster.get("tls-server-name"),
    )
    cert = _data_or_file(user, "client-certificate", base)
    key = _data_or_file(user, "client-key", base)
    creds: Credentials
    if user.get("exec"):
        spec = user["exec"]
        info = None
        if spec.get("provideClusterInfo"):
            info = {"server": cluster["server"], "insecure-skip-tls-verify": endpoint.insecure}
            if endpoint.ca_pem:
                info["certificate-authority-data"] = base64.b64encode(endpoint.ca_pem).decode()
        command = str(spec["command"])
        if os.sep in command and not os.path.isabs(command):
            command = str(base / command)
        creds = ExecPlugin(
            command,
            [str(a) for a in spec.get("args") or ()],
            {str(e["name"]): str(e["value"]) for e in spec.get("env") or ()},
            str(spec.get("apiVersion") or "client.authentication.k8s.io/v1"),
            info,
        )
    elif user.get("tokenFile"):
        creds = TokenFile(base / str(user["tokenFile"]), cert, key)
    else:
        creds = Static(Credential(user.get("token") or None, cert, key))
    return endpoint, creds


def in_cluster(
    environ: Mapping[str, str] | None = None, secrets: str | os.PathLike[str] = IN_CLUSTER_DIR
) -> tuple[Endpoint, Credentials]:
    """The API server as a Pod sees it: its Service's address from the environment, the ServiceAccount's CA, and
    its token (a file the kubelet rewrites before it expires)."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise ValueError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    d = Path(secrets)
    return Endpoint(host, int(port), True, ca_pem=(d / "ca.crt").read_bytes()), TokenFile(d / "token")

"""Where a completion webhook may go (SSRF rules) and how much of an answer the operator reads.

The pure vetting is table-tested; the connection path is tested with real loopback HTTP servers
through the operator's own ``webhook.session``/``webhook.post``: a refused destination never sees a
request, an allowlisted one does, a DNS answer naming a private address is never connected to, and
a 200 MiB answer leaves this process's RSS flat.
"""

from __future__ import annotations

import gc
import http.server
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from localk8s import _make_pki
from rollcall_operator import egress, webhook
from rollcall_operator.egress import Allowlist, EgressDenied, vet_address, vet_url, vetted
from rollcall_operator.settings import OperatorSettings

NONE = Allowlist()


@pytest.mark.parametrize(
    "addr",
    ["127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
     "169.254.169.254", "100.64.0.1", "100.127.255.255", "0.0.0.0", "224.0.0.1", "255.255.255.255",
     "240.0.0.1", "198.18.0.1", "192.0.2.7", "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1",
     "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",
     "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe",
     "2001:db8::1", "::127.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_denied(addr: str) -> None:
    with pytest.raises(EgressDenied):
        vet_address(addr, NONE)


@pytest.mark.parametrize("addr", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111",
                                  "::ffff:93.184.215.14", "100.128.0.1", "172.32.0.1"])  # fmt: skip
def test_public_addresses_pass(addr: str) -> None:
    assert vet_address(addr, NONE) == ipaddress.ip_address(addr)


def test_allowlisted_network_passes_and_deny_list_adds_cluster_ranges() -> None:
    allow = Allowlist.parse(cidrs=["10.20.0.0/16"], denied=["34.118.224.0/20"])
    assert str(vet_address("10.20.3.4", allow)) == "10.20.3.4"
    with pytest.raises(EgressDenied):
        vet_address("10.21.3.4", allow)
    with pytest.raises(EgressDenied):
        vet_address("34.118.230.1", allow)  # a public-looking service CIDR of the cluster


@pytest.mark.parametrize(
    ("url", "allow", "ok"),
    [
        ("https://hooks.school.example/rollcall", NONE, True),
        ("https://93.184.215.14:8443/x", NONE, True),
        ("http://hooks.school.example/x", NONE, False),  # plain http needs the opt-in
        ("http://hooks.school.example/x", Allowlist(allow_http=True), True),
        ("ftp://hooks.school.example/x", NONE, False),
        ("https://user:pw@hooks.school.example/x", NONE, False),
        ("https://169.254.169.254/latest/meta-data", NONE, False),
        ("https://[::1]:8080/", NONE, False),
        ("https://[::ffff:7f00:1]/", NONE, False),
        ("https://localhost/x", NONE, False),
        ("https://redis/x", NONE, False),  # single label: resolved through cluster search domains
        ("https://rollcall-redis.rollcall.svc/x", NONE, False),
        ("https://kubernetes.default.svc.cluster.local/x", NONE, False),
        ("https://rollcall-redis.rollcall.svc/x", Allowlist.parse(hosts=["*.rollcall.svc"]), True),
        ("https://hooks.rollcall.svc/x", Allowlist.parse(hosts=["hooks.rollcall.svc"]), True),
        ("https://other.svc/x", Allowlist.parse(hosts=["*.rollcall.svc"]), False),
        ("https://10.0.0.5/x", Allowlist.parse(cidrs=["10.0.0.0/24"]), True),
        ("https://hooks.school.example:0/x", NONE, False),
    ],
)
def test_vet_url(url: str, allow: Allowlist, ok: bool) -> None:
    if ok:
        assert vet_url(url, allow)
    else:
        with pytest.raises(EgressDenied):
            vet_url(url, allow)


def answer(host: str, *addrs: str, port: int = 443) -> list[ResolveResult]:
    return [
        ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET6 if ":" in a
                      else socket.AF_INET, proto=0, flags=0)
        for a in addrs
    ]  # fmt: skip


def test_resolver_filter_keeps_only_public_answers() -> None:
    mixed = answer("h.example", "10.0.0.1", "93.184.215.14", "::1")
    assert [a["host"] for a in vetted("h.example", mixed, NONE)] == ["93.184.215.14"]
    with pytest.raises(EgressDenied):
        vetted("h.example", answer("h.example", "127.0.0.1", "169.254.169.254"), NONE)
    allow = Allowlist.parse(hosts=["h.example"])
    assert len(vetted("h.example", answer("h.example", "10.0.0.1"), allow)) == 1


class Server:
    """A loopback HTTP server that records requests and answers with ``body_bytes`` of zeros.

    With ``hold_first`` the first request waits for ``release`` before it is answered (a POST still
    in flight when the sender dies); ``arrived`` is set once it came.
    """

    def __init__(self, body_bytes: int = 0, hold_first: bool = False) -> None:
        self.requests: list[dict[str, str]] = []
        self.arrived = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append(dict(self.headers.items()))
                if hold_first and len(outer.requests) == 1:
                    outer.arrived.set()
                    outer.release.wait(60)
                chunk = b"\0" * (1 << 20)
                sent = 0
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(body_bytes))
                    self.end_headers()
                    while sent < body_bytes:
                        n = min(len(chunk), body_bytes - sent)
                        self.wfile.write(chunk[:n])
                        sent += n
                except OSError:
                    pass  # the client hung up, as it should

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


class FixedDNS(AbstractResolver):
    """DNS that answers every name with the given addresses, in turn (a rebinding attacker)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addr = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        return answer(host, addr, port=port)

    async def close(self) -> None:
        pass


async def send(url: str, allow: Allowlist, dns: AbstractResolver | None = None) -> webhook.Attempt:
    http = webhook.session(allow)
    if dns is not None:  # the session's own vetting resolver, over a test DNS
        http.connector._resolver = egress.VettingResolver(allow, dns)  # type: ignore[union-attr]
    async with http:
        return await webhook.post(
            http, url, b"{}", allow=allow, secret=b"k", delivery="d", timestamp="1", timeout=10
        )


async def test_loopback_receiver_is_not_contacted_unless_allowlisted(server: Server) -> None:
    for url in (f"http://127.0.0.1:{server.port}/h", f"http://localhost:{server.port}/h"):
        got = await send(url, Allowlist(allow_http=True))
        assert (got.delivered, got.retry, got.error) == (False, False, webhook.DENIED)
    assert server.requests == []
    allowed = Allowlist.parse(cidrs=["127.0.0.0/8"], allow_http=True)
    got = await send(f"http://127.0.0.1:{server.port}/h", allowed)
    assert got.delivered and got.status == 200
    assert len(server.requests) == 1


async def test_https_only_by_default(server: Server) -> None:
    got = await send(f"http://127.0.0.1:{server.port}/h", Allowlist.parse(cidrs=["127.0.0.0/8"]))
    assert not got.delivered and got.error is not None and "http" in got.error
    assert server.requests == []


async def test_a_name_resolving_to_a_private_address_is_never_connected(server: Server) -> None:
    # a rebinding DNS: public for an earlier check, loopback when it matters; the connector
    # connects only to what the vetting resolver returned in its own lookup
    dns = FixedDNS("93.184.215.14", "127.0.0.1")
    early = await egress.VettingResolver(Allowlist(allow_http=True), dns).resolve("rebind.example")
    assert [a["host"] for a in early] == ["93.184.215.14"]
    got = await send(f"http://rebind.example:{server.port}/h", Allowlist(allow_http=True), dns)
    assert got.error == webhook.DENIED and not got.retry and dns.calls == 2
    assert server.requests == []


async def test_vetted_address_is_connected_with_the_original_host_header(server: Server) -> None:
    allow = Allowlist.parse(cidrs=["127.0.0.0/8"], allow_http=True)
    dns = FixedDNS("127.0.0.1")
    got = await send(f"http://hooks.school.example:{server.port}/h", allow, dns)
    assert got.delivered and dns.calls == 1
    assert server.requests[0]["Host"] == f"hooks.school.example:{server.port}"


async def test_tls_is_verified_against_the_original_name_not_the_vetted_address(
    tmp_path: Path,
) -> None:
    """The connection goes to the vetted IP, yet SNI and certificate checks use the URL's name."""
    _make_pki(tmp_path)  # a CA and a serving cert for localhost, kubernetes.default.svc, ...
    server = Server()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "apiserver.crt", tmp_path / "apiserver.key")
    names: list[str | None] = []

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    served.sni_callback = record_sni
    server.server.socket = served.wrap_socket(server.server.socket, server_side=True)
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    allow = Allowlist.parse(hosts=["kubernetes.default.svc"])
    dns = FixedDNS("127.0.0.1")
    connector = aiohttp.TCPConnector(resolver=egress.VettingResolver(allow, dns), ssl=client_ctx)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            url = f"https://kubernetes.default.svc:{server.port}/hook"
            got = await webhook.post(
                http, url, b"{}", allow=allow, secret=b"k", delivery="d", timestamp="1", timeout=10
            )
    finally:
        server.close()
    assert got.delivered and dns.calls == 1
    assert names == ["kubernetes.default.svc"]
    assert server.requests[0]["Host"] == f"kubernetes.default.svc:{server.port}"


async def test_unreachable_receiver_gets_a_generic_error() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got = await send(f"http://127.0.0.1:{port}/", Allowlist.parse(["127.0.0.0/8"], allow_http=True))
    assert got.error == webhook.UNREACHABLE and got.retry and got.status is None
    assert str(port) not in got.error


class PeakRSS:
    """A process's highest RSS while the block runs (default: this one), sampled every 5 ms."""

    def __init__(self, pid: int | None = None) -> None:
        self.proc = psutil.Process(pid)
        self.base = self.peak = 0
        self.done = threading.Event()

    def _sample(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.base = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    @property
    def grown(self) -> int:
        return self.peak - self.base


@pytest.mark.parametrize(("limit", "bounded"), [(webhook.MAX_RESPONSE_BYTES, True), (-1, False)])
async def test_a_huge_answer_is_not_read_into_memory(limit: int, bounded: bool) -> None:
    """The operator's limit keeps the peak flat; reading the whole answer (-1) would not."""
    big = Server(body_bytes=200 << 20)
    allow = Allowlist.parse(cidrs=["127.0.0.0/8"], allow_http=True)
    try:
        async with webhook.session(allow) as http:
            with PeakRSS() as rss:
                got = await webhook.post(
                    http, f"http://127.0.0.1:{big.port}/h", b"{}", allow=allow, secret=b"k",
                    delivery="d", timestamp="1", timeout=60, max_response_bytes=limit,
                )  # fmt: skip
    finally:
        big.close()
    assert got.delivered and len(big.requests) == 1
    if bounded:
        assert rss.grown < 32 << 20, f"peak RSS grew {rss.grown >> 20} MiB for a 200 MiB answer"
    else:  # the control: the same answer read whole shows up in the peak
        assert rss.grown > 150 << 20, f"peak RSS grew only {rss.grown >> 20} MiB"


def test_settings_build_the_allowlist_and_refuse_bad_cidrs() -> None:
    s = OperatorSettings(webhook_allow_cidrs=["10.0.0.0/8"], webhook_allow_hosts=["*.a.svc"])
    allow = s.egress_allowlist()
    assert allow.host_allowed("x.a.svc") and not allow.host_allowed("a.svc")
    assert not allow.allow_http
    with pytest.raises(ValueError):
        OperatorSettings(webhook_allow_cidrs=["10.0.0.0/33"])
